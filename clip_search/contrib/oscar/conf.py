"""``settings.CLIP_SEARCH_OSCAR``: what the Oscar integration does, read on every use."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {
    # Register catalogue.Product in ready(). False: the shop calls
    # clip_search.contrib.oscar.catalog.register_product(**overrides) itself, or registers its own.
    "REGISTER": True,
    # Put ClipSearchAdminMixin in front of Oscar's ProductAdmin on the default admin site.
    "ADMIN": True,
    # Attribute codes whose values are identifiers (matched as keywords, not as words).
    "KEYWORD_ATTRIBUTES": ["brand", "manufacturer", "model", "mpn", "gtin", "ean", "isbn"],
    # Attribute types whose values are searchable words.
    "TEXT_ATTRIBUTE_TYPES": ["text", "richtext", "option", "multi_option"],
}


def oscar_options() -> dict[str, Any]:
    options = {**DEFAULTS, **(getattr(settings, "CLIP_SEARCH_OSCAR", None) or {})}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"CLIP_SEARCH_OSCAR: unknown option(s) {', '.join(sorted(unknown))}; "
                                   f"known: {', '.join(DEFAULTS)}.")
    return options
