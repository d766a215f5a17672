"""Limit/offset pages; a search page also says which legs answered and what was degraded."""

from __future__ import annotations

import copy
from typing import Any

from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response

from clip_search.api.conf import api_options

# What a shopper is told about a leg that could not answer. search() gives the exception's text
# (model paths and all): that goes to the log, not to the public.
DEGRADED_MESSAGES: dict[str, Any] = {
    "vector": _("Matching by meaning is unavailable right now; words and SKUs still match."),
    "image": _("Search by picture is unavailable right now; the words still match."),
    "fulltext": _("Full-text matching is unavailable right now."),
    "keyword": _("SKU and brand matching is unavailable right now."),
}

SEARCH_INFO_SCHEMA: dict[str, Any] = {
    "query": {"type": "string", "description": "The query text as searched (normalised)."},
    "truncated": {"type": "boolean",
                  "description": "The query was cut to CLIP_SEARCH['SEARCH']['MAX_QUERY_LENGTH']."},
    "legs": {"type": "array", "items": {"type": "string", "enum": ["vector", "fulltext", "keyword"]},
             "description": "The search legs that ran."},
    "did_you_mean": {"type": "string", "nullable": True,
                     "description": "The query as searched when misspelt words were corrected against the "
                                    "catalog's own words (\"umbrela\" → \"umbrella\"); null when nothing "
                                    "was. `correct=false` searches the words as typed."},
    "unknown_words": {"type": "array", "items": {"type": "string"},
                      "description": "Words no product uses, in any form, that no correction reaches."},
    "relaxed": {"type": "boolean",
                "description": "No product has every word: the text legs ranked products having some."},
    "capped": {"type": "boolean",
               "description": "A search leg kept its full depth: more products may match than `count` "
                              "(refine the query to see others)."},
    "search_id": {"type": "string", "format": "uuid", "nullable": True,
                  "description": "This search in the search log: what `POST /api/v1/events/` names (null "
                                 "when the shop keeps no log)."},
    "sort": {"type": "string", "description": "The order of the results."},
    "sorts": {"type": "array", "description": "The orders offered (`sort` values).", "items": {
        "type": "object", "properties": {"value": {"type": "string"}, "label": {"type": "string"}},
        "required": ["value", "label"]}},
    "facets": {"type": "array", "description": "Counts over every hit (not the page) per facet value, "
                                               "under the other facets' selections; a value's count is "
                                               "what selecting it shows.", "items": {
        "type": "object", "required": ["name", "title", "kind", "values"], "properties": {
            "name": {"type": "string", "description": "The query parameter that selects a value."},
            "title": {"type": "string"},
            "kind": {"type": "string", "enum": ["terms", "range", "boolean"]},
            "values": {"type": "array", "items": {
                "type": "object", "required": ["value", "label", "count", "selected"], "properties": {
                    "value": {"type": "string"}, "label": {"type": "string"},
                    "count": {"type": "integer"}, "selected": {"type": "boolean"}}}}}}},
    "degraded": {
        "type": "object", "additionalProperties": {"type": "string"},
        "description": "What could not answer, for people: {\"vector\": ...} (the encoder is down, "
                       "the words and SKUs answered alone), {\"image\": ...} (the picture could not "
                       "be searched, the words answered). Empty when everything ran.",
    },
}


class ApiPagination(LimitOffsetPagination):
    """``?limit=&offset=``, with the page size and cap of ``CLIP_SEARCH_API``."""

    def paginate_queryset(self, queryset: QuerySet, request: Request, view: Any = None) -> list[Any]:
        options = api_options()
        self.default_limit, self.max_limit = options["PAGE_SIZE"], options["MAX_PAGE_SIZE"]
        return super().paginate_queryset(queryset, request, view)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        options = api_options()
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["description"] = (f"Results per page (default {options['PAGE_SIZE']}, "
                                            f"at most {options['MAX_PAGE_SIZE']}).")
                parameter["schema"].update(minimum=1)
            else:
                parameter["schema"].update(minimum=0)
        return parameters


class SearchPagination(ApiPagination):
    """A page of hits plus the search's ``query``, ``truncated``, ``legs`` and ``degraded``."""

    def paginate_queryset(self, queryset: QuerySet, request: Request, view: Any = None) -> list[Any]:
        self.search_info = getattr(queryset, "search_info", None)
        self.view = view
        return super().paginate_queryset(queryset, request, view)

    def get_count(self, queryset: QuerySet) -> int:
        """The hits search() found, already within the queryset's filters: no COUNT(*) query
        (with its lookup arrays, ~4 ms a page at 200k products), unless facets narrowed them
        (the view counted what is left)."""
        counted = getattr(self.view, "hit_count", None)
        if counted is not None:
            return counted
        if self.search_info is None:
            return super().get_count(queryset)
        return len(self.search_info.hits)

    def get_paginated_response(self, data: list[Any]) -> Response:
        from clip_search.api.facets import storefront_sorts
        from clip_search.search import SearchInfo

        info, view = self.search_info or SearchInfo(), self.view
        return Response({
            "count": self.count,
            "next": self.get_next_link(),
            "previous": self.get_previous_link(),
            "query": info.query,
            "truncated": info.truncated,
            "legs": list(info.legs),
            "degraded": {leg: str(DEGRADED_MESSAGES.get(leg, _("Unavailable right now.")))
                         for leg in info.degraded},
            "did_you_mean": info.corrected_query,
            "unknown_words": list(info.unknown_words),
            "relaxed": info.relaxed,
            "capped": info.capped,
            "search_id": getattr(view, "search_id", None),
            "sort": getattr(view, "sort", "relevance"),
            "sorts": [{"value": name, "label": str(option["label"])}
                      for name, option in storefront_sorts(view.registration).items()],
            "facets": getattr(view, "facet_counts", []),
            "results": data,
        })

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A copy of SEARCH_INFO_SCHEMA each time: drf-spectacular's enum hook rewrites the
        document in place (the ``legs`` enum becomes a ``$ref``), so a shared dict would leave
        the next document in the process with a reference to a component it no longer has."""
        paginated = super().get_paginated_response_schema(schema)
        results = paginated["properties"].pop("results")
        paginated["properties"].update(copy.deepcopy(SEARCH_INFO_SCHEMA), results=results)
        paginated["required"] = ["count", "next", "previous", *SEARCH_INFO_SCHEMA, "results"]
        return paginated
