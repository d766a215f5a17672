"""The storefront's facets and sorts, as ``CLIP_SEARCH_API`` declares them."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.filters import BaseFilterBackend
from rest_framework.request import Request

from clip_search import facets
from clip_search.api.conf import api_options
from clip_search.registry import Registration

RELEVANCE = "relevance"
_declared: dict[tuple[str, str], list[facets.Facet]] = {}


def storefront_facets(registration: Registration) -> list[facets.Facet]:
    """``FACETS`` as Facet objects, checked once per declaration (ImproperlyConfigured)."""
    options = api_options(registration)["FACETS"]
    key = (registration.label, repr(options))
    if key not in _declared:
        _declared[key] = facets.declared(registration.model, options)
    return _declared[key]


def storefront_sorts(registration: Registration) -> dict[str, dict[str, Any]]:
    """Relevance, then ``SORTS``: {name: {"label": ..., "order_by": [...]}}."""
    sorts = {RELEVANCE: {"label": _("Relevance"), "order_by": []}}
    for name, option in api_options(registration)["SORTS"].items():
        if name == RELEVANCE or not isinstance(option, dict) or not option.get("order_by"):
            raise ImproperlyConfigured(f"CLIP_SEARCH_API['SORTS'][{name!r}] needs an 'order_by' list "
                                       f"(and a 'label'), and 'relevance' is built in.")
        sorts[name] = {"label": option.get("label", name), "order_by": list(option["order_by"])}
    return sorts


def ordered(results: models.QuerySet, registration: Registration, sort: str) -> models.QuerySet:
    """The hits in the requested order; ties (and relevance itself) by search rank."""
    order_by = storefront_sorts(registration)[sort]["order_by"]
    return results.order_by(*order_by, "search_rank") if order_by else results


class FacetFilterBackend(BaseFilterBackend):
    """Reads (and documents) the facet selections of a request: ``?brand=Nordvik&price=25-50``.

    It leaves the queryset alone: a facet narrows the hits the query found (clip_search.facets),
    which the view does after the search. A bad value is a 400 naming the facet.
    """

    def filter_queryset(self, request: Request, queryset: models.QuerySet, view: Any) -> models.QuerySet:
        declared = storefront_facets(view.registration)
        try:
            view.facet_selection = facets.select(
                declared, {facet.name: request.query_params.getlist(facet.name) for facet in declared})
        except DjangoValidationError as error:
            raise exceptions.ValidationError(error.message_dict) from error
        return queryset

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = []
        for facet in storefront_facets(view.registration):
            description = {
                "range": _("Facet “%(title)s”: a range such as 25-50 (from 25 to under 50), -25 or 100-; "
                           "repeat for any of several."),
                "boolean": _("Facet “%(title)s”: true or false."),
                "terms": _("Facet “%(title)s”: a value from the response's `facets`; repeat for any "
                           "of several."),
            }[facet.kind] % {"title": facet.title}
            parameters.append({
                "name": facet.name, "required": False, "in": "query", "description": str(description),
                "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": True})
        return parameters
