"""CLIP-powered hybrid product search for existing Django shops.

    import clip_search
    clip_search.register(Product, image="image", text=["title"], keywords=["sku"])
"""

from clip_search.registry import Registration, RegistrationError, register, registry, unregister

__all__ = ["Registration", "RegistrationError", "register", "registry", "unregister"]
__version__ = "0.1.0"
