"""The storefront's filters: the shop's own django-filter FilterSet, or one built from fields."""

from __future__ import annotations

import django_filters
from django_filters.filterset import filterset_factory

from clip_search.api.conf import api_options, imported
from clip_search.registry import Registration

_filtersets: dict[tuple[str, str], type[django_filters.FilterSet]] = {}


def filterset_class_for(registration: Registration) -> type[django_filters.FilterSet] | None:
    """``FILTERSET``, else one over ``FILTER_FIELDS``, else None (no filters)."""
    options = api_options(registration)
    if options["FILTERSET"]:
        return imported(options["FILTERSET"])
    fields = options["FILTER_FIELDS"]
    if not fields:
        return None
    key = (registration.label, repr(fields))
    if key not in _filtersets:
        _filtersets[key] = filterset_factory(registration.model, fields=fields)
    return _filtersets[key]
