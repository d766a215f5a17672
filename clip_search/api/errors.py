"""One error body for every failure of the API, via an exception handler scoped to its views.

``{"error": {"code": "...", "message": "...", "detail": ...}}``: ``code`` is stable and
machine-readable, ``message`` is for people, ``detail`` carries field errors (400) or the
seconds to wait (429, 503), else null. The shop's global ``EXCEPTION_HANDLER`` is left alone.

Two kinds of failure that are not DRF's own get the body too, instead of Django's HTML pages:
a request Django finds suspicious while DRF parses it in the view (too many fields, too large a
form: ``SuspiciousOperation``) is a 400, and a database that cannot answer for now (down,
restarting, out of connections; a deadlock or serialization failure) is a 503 with
``Retry-After``, since trying again shortly is the right move for the client. What went wrong
on the server (a socket path, the SQL) goes to the log, never into the body.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db import InterfaceError, OperationalError
from django.http import Http404
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from clip_search.api.conf import api_options
from clip_search.imaging import ImageRejected

logger = logging.getLogger(__name__)

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


class EventNotTied(exceptions.APIException):
    """An event whose search does not exist, or did not show that product there; the code says
    which (``unknown_search``, ``not_in_results``, ``wrong_position``)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = _("The event does not match a search.")
    default_code = "unknown_search"


class ImageSearchUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = _("Image search is unavailable right now; try again later or search by words.")
    default_code = "image_search_unavailable"


class Unavailable(exceptions.APIException):
    """The database could not answer this request now; the client should retry shortly."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = _("The service is unavailable for a moment; please try again in %(seconds)d seconds.")
    default_code = "unavailable"

    def __init__(self, wait: int) -> None:
        super().__init__(self.default_detail % {"seconds": wait})
        self.wait = wait


class BadRequest(exceptions.APIException):
    """Django refused the request as suspicious (``SuspiciousOperation``) while DRF parsed it."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = _("The request could not be processed.")
    default_code = "bad_request"


# What a client is told about the SuspiciousOperation subclasses it can cause by accident;
# any other one gets BadRequest's generic message (its own text may name server paths).
SUSPICIOUS_MESSAGES: dict[type[SuspiciousOperation], Any] = {
    TooManyFieldsSent: _("The request has too many form fields."),
    RequestDataTooBig: _("The request's form data is too large."),
}


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": str(message), "detail": detail}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exceptions, rejected images, suspicious requests and a database that cannot answer
    now as the error body; anything else stays a 500."""
    if isinstance(exc, ImageRejected):
        return Response(error_body(exc.code, exc.message),
                        status=IMAGE_STATUS.get(exc.code, status.HTTP_400_BAD_REQUEST))
    if isinstance(exc, (OperationalError, InterfaceError)):  # InterfaceError: psycopg2's closed connection
        exc = _unavailable(exc, context)
    elif isinstance(exc, SuspiciousOperation):
        exc = _bad_request(exc, context)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if isinstance(exc, (exceptions.Throttled, Unavailable)) and exc.wait is not None:
        headers["Retry-After"] = str(math.ceil(exc.wait))
    set_rollback()
    return Response(_describe(exc), status=exc.status_code, headers=headers)


def _unavailable(exc: Exception, context: dict[str, Any]) -> Unavailable:
    """Logged in full here (the server's side); the client learns only when to retry."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None)  # psycopg's: 40P01 deadlock, 40001, 57P01...
    logger.exception("clip_search API: the database could not answer %s (%s)", _request_line(context),
                     sqlstate or type(exc).__name__, exc_info=exc)
    return Unavailable(int(api_options()["UNAVAILABLE_RETRY_AFTER"]))


def _bad_request(exc: SuspiciousOperation, context: dict[str, Any]) -> BadRequest:
    """Logged as Django logs a SuspiciousOperation it turns into a 400 (``django.security.*``),
    so a shop's security monitoring still sees it."""
    request = getattr(context.get("request"), "_request", None)
    logging.getLogger(f"django.security.{type(exc).__name__}").error(
        str(exc), exc_info=exc, extra={"status_code": 400, "request": request})
    for kind, message in SUSPICIOUS_MESSAGES.items():
        if isinstance(exc, kind):
            return BadRequest(message)
    return BadRequest()


def _request_line(context: dict[str, Any]) -> str:
    request = context.get("request")
    return f"{request.method} {request.path}" if request is not None else "a request"


def _describe(exc: exceptions.APIException) -> dict[str, Any]:
    if isinstance(exc, exceptions.ValidationError):
        return error_body("invalid", _first_message(exc.detail), exc.detail)
    if isinstance(exc, exceptions.Throttled):
        wait = None if exc.wait is None else math.ceil(exc.wait)
        return error_body("throttled", exc.detail, {"retry_after": wait})
    if isinstance(exc, Unavailable):
        return error_body(exc.default_code, exc.detail, {"retry_after": exc.wait})
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
