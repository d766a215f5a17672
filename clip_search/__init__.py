"""CLIP-powered hybrid product search for existing Django shops.

    import clip_search
    clip_search.register(Product, images="gallery__image", text=["title"], keywords=["sku"])
    clip_search.reindex(Product.objects.filter(brand=brand))  # queue work from shop code
"""

from __future__ import annotations

from typing import Any

from clip_search.registry import Registration, RegistrationError, register, registry, unregister

__all__ = ["Registration", "RegistrationError", "register", "registry", "reindex", "unregister"]
__version__ = "0.2.0"


def reindex(target: Any, *, force: bool = False) -> int:
    """Queue (re-)embedding of an object, queryset or list of registered objects on commit;
    see ``clip_search.tasks.reindex``. Returns how many objects were queued."""
    from clip_search.tasks import reindex as queue

    return queue(target, force=force)
