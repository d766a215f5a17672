"""Options of the REST API, and which registered model, serializer and FilterSet it serves.

These are module constants until ``clip_search.conf`` grows an ``"API"`` key: a shop
overrides them with a ``CLIP_SEARCH_API`` dict in its settings (read on every request, so
``override_settings`` works), and per model with ``clip_search.register(..., api={...})``
(lower- or upper-case keys), which wins over the setting for that model.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from clip_search.registry import Registration, registry

API_DEFAULTS: dict[str, Any] = {
    # Label of the registered model the storefront endpoints serve ("catalog.product");
    # None: the only registered model.
    "MODEL": None,
    # Import path of the result serializer; None: pk, name (str()), image URL and FIELDS.
    "SERIALIZER": None,
    # Model fields the default serializer adds.
    "FIELDS": [],
    # Import path of a django-filter FilterSet over the model; None: one built from
    # FILTER_FIELDS ({"price": ["gte", "lte"], "in_stock": ["exact"]}), or no filters.
    "FILTERSET": None,
    "FILTER_FIELDS": {},
    # Facets counted over a search's hits and selected by a parameter of their name
    # (clip_search.facets): {"brand": {"field": "brand__name"}, "price": {"field": "price",
    # "ranges": [[None, 25], [25, None]]}, "category": {"field": "category__slug",
    # "label": "category__name", "title": "Category"}}.
    "FACETS": {},
    # Orders offered besides relevance (``?sort=price``): {"price": {"label": "Price: low to
    # high", "order_by": ["price"]}}; ties keep their relevance order.
    "SORTS": {},
    # Pagination (limit/offset): pages are cut from the best CLIP_SEARCH["SEARCH"]["LIMIT"] hits.
    "PAGE_SIZE": 24,
    "MAX_PAGE_SIZE": 100,
    "SEARCH_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    # The review queue needs clip_search.view_reviewitem (or change) to list and
    # clip_search.change_reviewitem to approve or reject: is_staff alone is not enough.
    "REVIEW_PERMISSION_CLASSES": ["clip_search.api.permissions.ReviewPermission"],
    # Product tags need clip_search.view_producttag (or change) to list and
    # clip_search.change_producttag to suggest, accept or reject.
    "TAG_PERMISSION_CLASSES": ["clip_search.api.permissions.TagPermission"],
    # Seconds a client is told to wait (Retry-After) when the database is unavailable, or a
    # deadlock or serialization failure aborted its request: a 503 to retry, not a 500.
    "UNAVAILABLE_RETRY_AFTER": 5,
}

# ScopedRateThrottle scopes. A shop sets their rates in REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"];
# a scope it leaves out gets the rate here, so the API is never unthrottled by omission.
SEARCH_SCOPE = "clip_search"
IMAGE_SCOPE = "clip_search_image"
# Search-as-you-type asks on every pause in typing: a scope of its own, more generous.
SUGGEST_SCOPE = "clip_search_suggest"
# Clicks, carts and purchases a storefront reports (a beacon per click).
EVENTS_SCOPE = "clip_search_events"
DEFAULT_THROTTLE_RATES: dict[str, str] = {SEARCH_SCOPE: "120/min", IMAGE_SCOPE: "20/min",
                                          SUGGEST_SCOPE: "600/min", EVENTS_SCOPE: "300/min"}

VERSIONS = ("v1",)


def api_options(registration: Registration | None = None) -> dict[str, Any]:
    """Defaults, then ``settings.CLIP_SEARCH_API``, then the registration's ``api`` extra."""
    options = {**API_DEFAULTS, **(getattr(settings, "CLIP_SEARCH_API", None) or {})}
    if registration is not None:
        options.update({key.upper(): value for key, value in registration.extra.get("api", {}).items()})
    unknown = set(options) - set(API_DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(f"CLIP_SEARCH_API: unknown option(s) {', '.join(sorted(unknown))}.")
    return options


def storefront_registration() -> Registration:
    """The registration the storefront endpoints serve: ``MODEL``, or the only one."""
    label = api_options()["MODEL"]
    if label:
        return registry.get(label)
    registrations = list(registry)
    if len(registrations) != 1:
        raise ImproperlyConfigured(
            "clip_search.api: set CLIP_SEARCH_API['MODEL'] to the label of the model to serve "
            f"({len(registrations)} models are registered).")
    return registrations[0]


def imported(value: Any) -> Any:
    """A class given as an import path or as the class itself."""
    return import_string(value) if isinstance(value, str) else value
