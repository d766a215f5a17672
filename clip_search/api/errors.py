"""One error body for every failure of the API, via an exception handler scoped to its views.

``{"error": {"code": "...", "message": "...", "detail": ...}}``: ``code`` is stable and
machine-readable, ``message`` is for people, ``detail`` carries field errors (400) or the
seconds to wait (429), else null. The shop's global ``EXCEPTION_HANDLER`` is left alone.
"""

from __future__ import annotations

import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from clip_search.imaging import ImageRejected

# imaging.ImageRejected codes → HTTP status; the code itself is the error code.
IMAGE_STATUS: dict[str, int] = {
    "too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    "not_an_image": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "format": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "empty": status.HTTP_400_BAD_REQUEST,
    "broken": status.HTTP_400_BAD_REQUEST,
    "too_many_pixels": status.HTTP_400_BAD_REQUEST,
}


class NotIndexed(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = _("This product has no searchable image yet.")
    default_code = "not_indexed"


class AlreadyDecided(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = _("This review item is already decided.")
    default_code = "already_decided"


class ImageChanged(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = _("The product no longer has the reviewed image; its new image is reviewed on its own.")
    default_code = "image_changed"


class ImageSearchUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = _("Image search is unavailable right now; try again later or search by words.")
    default_code = "image_search_unavailable"


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": str(message), "detail": detail}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exceptions and rejected images as the error body; anything else stays a 500."""
    if isinstance(exc, ImageRejected):
        return Response(error_body(exc.code, exc.message),
                        status=IMAGE_STATUS.get(exc.code, status.HTTP_400_BAD_REQUEST))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        headers["Retry-After"] = str(math.ceil(exc.wait))
    set_rollback()
    return Response(_describe(exc), status=exc.status_code, headers=headers)


def _describe(exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        return error_body("invalid", _first_message(exc.detail), exc.detail)
    if isinstance(exc, exceptions.Throttled):
        wait = None if exc.wait is None else math.ceil(exc.wait)
        return error_body("throttled", exc.detail, {"retry_after": wait})
    code = getattr(exc.detail, "code", None) or exc.default_code
    return error_body(code, exc.detail)


def _first_message(detail: Any, field: str = "") -> str:
    """``"q: This field may not be blank."``: the first field error, for a person to read."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            return _first_message(value, f"{field}.{name}" if field and name else field or name)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], field)
    return f"{field}: {detail}" if field else str(detail or _("The request is invalid."))
