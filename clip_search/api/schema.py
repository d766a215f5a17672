"""OpenAPI for the API: 200 from each view's serializer, errors from its ``error_responses``.

The result serializer is the shop's, known only at run time, so the success response is
read from the view (``get_serializer_class``) instead of being fixed in ``@extend_schema``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django.utils.translation import gettext_lazy as _
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema

from clip_search.api.serializers import ErrorSerializer

ERROR_DESCRIPTIONS: dict[int, Any] = {
    400: _("The query, a filter or the upload is invalid; `error.detail` has the field errors."),
    401: _("Not logged in (with an authentication scheme that can challenge, e.g. Basic or Token)."),
    403: _("Not logged in (session authentication), or without the permission the route needs "
           "(review queue: `clip_search.view_reviewitem` to list, `change_reviewitem` to decide)."),
    404: _("No such object, or not one the storefront may show."),
    409: _("The object is not in a state that allows this."),
    413: _("The upload is over CLIP_SEARCH['IMAGE']['MAX_BYTES'] (`too_large`)."),
    415: _("The upload is not an image (`not_an_image`), an image format that is not allowed "
           "(`format`), or the request is not multipart (`unsupported_media_type`)."),
    429: _("Throttled; `Retry-After` and `error.detail.retry_after` say how many seconds to wait."),
    503: _("The database cannot answer right now (`unavailable`); `Retry-After` and "
           "`error.detail.retry_after` say how many seconds to wait before trying again."),
}


def error_response(status: int, description: Any = None) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description or ERROR_DESCRIPTIONS[status])


class ApiAutoSchema(AutoSchema):
    def get_response_serializers(self) -> dict[int, Any]:
        view = self.view
        ok = view.get_serializer_class()(many=view.many_results)
        responses: dict[int, Any] = {200: OpenApiResponse(ok, description=view.success_description)}
        for status, description in view.error_responses.items():
            responses[status] = error_response(status, description)
        responses.setdefault(503, error_response(503))  # any route, when the database is down
        return responses

    def _is_list_view(self, serializer: Any = None) -> bool:
        """Pages (and filters) where the view says so: spectacular guesses "not a list" for a POST."""
        return bool(self.view.many_results)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def api_operation(**details: Any) -> Callable[[Handler], Handler]:
    """``@extend_schema(**details)`` for a handler of an ``ApiView``, built on ``ApiAutoSchema``.

    ``extend_schema`` bases the schema class it makes for a method on DRF's
    ``DEFAULT_SCHEMA_CLASS`` unless the method names one in ``schema``. A shop that leaves DRF's
    default (its own ``AutoSchema``) would get a class whose ``get_operation`` is DRF's even after
    drf-spectacular rearranges it over the view's ``ApiAutoSchema``: the schema view answered 500.
    Naming ours here makes the documentation independent of the shop's REST_FRAMEWORK settings.
    """
    def decorate(handler: Handler) -> Handler:
        handler.schema = ApiAutoSchema  # type: ignore[attr-defined]  # read by extend_schema as its base
        try:
            return extend_schema(**details)(handler)
        finally:
            del handler.schema  # type: ignore[attr-defined]  # the result is in handler.kwargs["schema"]

    return decorate


def api_endpoints_only(endpoints: list[tuple], **kwargs: Any) -> list[tuple]:
    """Preprocessing hook: the schema of this API only, not the rest of the shop's URLs."""
    return [endpoint for endpoint in endpoints
            if getattr(getattr(endpoint[3], "cls", None), "clip_search_api", False)]
