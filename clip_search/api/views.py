"""Storefront search (text, image, more like this) and the staff review queue, over DRF.

Storefront views start from ``registration.get_queryset()`` (what the shop may show), apply
the shop's filters, then ``search()`` without ``include_quarantined``: flagged, rejected and
pending products never come back. Every error is ``{"error": {...}}`` (``errors.py``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, InterfaceError, models
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _
from django_filters import FilterSet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework import exceptions, serializers
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.versioning import URLPathVersioning
from rest_framework.views import APIView

from clip_search import facets, highlight, lexicon, moderation, searchlog
from clip_search.api.conf import (
    EVENTS_SCOPE,
    IMAGE_SCOPE,
    SEARCH_SCOPE,
    SUGGEST_SCOPE,
    VERSIONS,
    api_options,
    storefront_registration,
)
from clip_search.api.errors import (
    AlreadyDecided,
    EventNotTied,
    ImageChanged,
    ImageSearchUnavailable,
    NotIndexed,
    api_exception_handler,
)
from clip_search.api.facets import FacetFilterBackend, ordered, storefront_facets, storefront_sorts
from clip_search.api.filters import filterset_class_for
from clip_search.api.pagination import ApiPagination, SearchPagination
from clip_search.api.schema import ApiAutoSchema, api_operation
from clip_search.api.serializers import (
    EventRecordedSerializer,
    EventSerializer,
    ImageSearchSerializer,
    ResultParamsSerializer,
    ReviewDecisionSerializer,
    ReviewItemSerializer,
    ReviewListParamsSerializer,
    SearchParamsSerializer,
    SuggestionsSerializer,
    SuggestParamsSerializer,
    result_serializer_class,
)
from clip_search.api.throttling import ClipScopedRateThrottle
from clip_search.conf import clip_settings
from clip_search.imaging import ImageRejected
from clip_search.models import Embedding, ReviewItem, SearchRecord
from clip_search.registry import Registration, registry
from clip_search.search import SearchError, search

logger = logging.getLogger(__name__)

# Multipart overhead allowed on top of IMAGE["MAX_BYTES"] before a body is refused unread.
MULTIPART_SLACK = 64 * 1024

class ApiVersioning(URLPathVersioning):
    """``/api/v1/...``; another version is a 404."""

    allowed_versions = VERSIONS
    default_version = VERSIONS[-1]


class ApiView(GenericAPIView):
    """Versioned, documented, and answering errors in the API's own error body."""

    clip_search_api = True  # marks this API's endpoints for the schema (schema.api_endpoints_only)
    versioning_class = ApiVersioning
    schema = ApiAutoSchema()
    pagination_class = None
    many_results = False
    success_description: Any = ""
    error_responses: dict[int, Any] = {}
    permission_option = "SEARCH_PERMISSION_CLASSES"

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return api_exception_handler

    def get_permissions(self) -> list[Any]:
        return [import_string(path)() for path in api_options()[self.permission_option]]

    def get_throttles(self) -> list[Any]:
        """A view with a ``throttle_scope`` is throttled by it (rates read per request)."""
        scoped = [ClipScopedRateThrottle()] if getattr(self, "throttle_scope", None) else []
        return [*super().get_throttles(), *scoped]

    def validated(self, serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class StorefrontView(ApiView):
    """Search among what the shop shows, filtered by the shop's FilterSet, one page of hits,
    narrowed by the selected facets, in the requested order, with the facets' counts."""

    filter_backends = [DjangoFilterBackend, FacetFilterBackend]
    pagination_class = SearchPagination
    many_results = True
    success_description = _("A page of hits, best first, with what the search did (`legs`, `degraded`).")
    throttle_scope = SEARCH_SCOPE
    error_responses = {400: None, 429: None}

    @property
    def registration(self) -> Registration:
        return storefront_registration()

    @property
    def filterset_class(self) -> type[FilterSet] | None:  # read by DjangoFilterBackend and the schema
        return filterset_class_for(self.registration)

    def get_queryset(self) -> models.QuerySet:
        return self.registration.get_queryset()

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return result_serializer_class(self.registration)

    log_kind = SearchRecord.Kind.TEXT  # what the search log calls this view's searches

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()  # the logged latency starts here
        super().initial(request, *args, **kwargs)

    def search(self, queryset: models.QuerySet, **query: Any) -> models.QuerySet:
        return search(queryset, limit=clip_settings.SEARCH["LIMIT"], **query)

    def result_params(self, serializer_class: type[serializers.Serializer] = ResultParamsSerializer
                      ) -> dict[str, Any]:
        params = self.validated(serializer_class, self.request.query_params)
        if params["sort"] not in storefront_sorts(self.registration):
            message = _("Unknown order %(sort)s.") % {"sort": params["sort"]}
            raise exceptions.ValidationError({"sort": [message]})
        return params

    def respond(self, results: models.QuerySet, params: dict[str, Any]) -> Response:
        """A page of ``results`` as ``params`` (ResultParamsSerializer) and the facets ask, and the
        search's row in the search log (handed to its writer thread)."""
        registration, info = self.registration, results.search_info
        declared, selected = storefront_facets(registration), getattr(self, "facet_selection", {})
        if selected:
            results = results.filter(facets.narrowing(declared, selected))
            self.hit_count = results.count()
        results = ordered(results, registration, params["sort"])
        logged = self.log_row(results, reordered=bool(selected) or params["sort"] != "relevance")
        self.search_id = logged and str(logged.id)
        results = results.select_related(*registration.related_paths()).prefetch_related(
            *registration.prefetch_paths())
        page = self.paginate_queryset(results)
        context = {**self.get_serializer_context(), "search_info": info, "explain": params["explain"]}
        if params["highlight"]:
            context["highlights"] = highlight.highlight(registration, page, info.terms, using=results.db)
        self.facet_counts = facets.count(registration.model, list(info.hits), declared, selected,
                                         using=results.db) if declared else []
        self.sort = params["sort"]
        serializer = self.get_serializer_class()(page, many=True, context=context)
        response = self.get_paginated_response(serializer.data)
        if logged is not None:
            searchlog.save_later(logged)
        return response

    def log_row(self, results: models.QuerySet, *, reordered: bool) -> SearchRecord | None:
        """The search's log row (``SEARCH_LOG``), with the results in the order shown."""
        if not searchlog.enabled():
            return None
        kept = clip_settings.SEARCH_LOG["RESULTS_KEPT"]
        shown = [str(pk) for pk in results.values_list("pk", flat=True)[:kept]] if reordered else None
        asked = {key: values for key, values in self.request.query_params.lists() if key not in UNLOGGED}
        return searchlog.build(results, request=self.request, kind=self.log_kind, filters=asked, shown=shown,
                               started=getattr(self, "started", None))


# Request parameters that say how to show a search, not what it looked for.
UNLOGGED = {"q", "limit", "offset", "explain", "highlight", "format"}


SEARCH_DESCRIPTION = _(
    "Hybrid search over the products the storefront shows: CLIP text→image vectors, full text "
    "and SKU/brand keywords, fused by reciprocal rank; an exact SKU ranks first. Filters are the "
    "shop's own (its FilterSet). Pages are cut from the best CLIP_SEARCH['SEARCH']['LIMIT'] hits. "
    "When the text encoder is down the keyword legs answer alone: still 200, and `degraded` "
    "says what is missing. Throttle scope: `clip_search`.")


class SearchView(StorefrontView):
    @api_operation(
        operation_id="search_text", tags=["search"], summary=_("Search products by words"),
        description=SEARCH_DESCRIPTION, parameters=[SearchParamsSerializer])
    def get(self, request: Request, version: str) -> Response:
        params = self.result_params(SearchParamsSerializer)
        results = self.search(self.filter_queryset(self.get_queryset()), text=params["q"],
                              correct=params["correct"])
        return self.respond(results, params)


class ImageSearchView(StorefrontView):
    parser_classes = [MultiPartParser, FormParser]
    throttle_scope = IMAGE_SCOPE
    log_kind = SearchRecord.Kind.IMAGE
    error_responses = {400: None, 413: None, 415: None, 429: None, 503: _(
        "Image search is unavailable (`image_search_unavailable`: the image encoder cannot be "
        "loaded), or the database cannot answer right now (`unavailable`, with `Retry-After`).")}

    @api_operation(
        operation_id="search_image", tags=["search"], summary=_("Search products by a picture"),
        description=_(
            "Upload a picture (multipart `image`, optionally with words in `q`); filters, "
            "`explain`, `limit` and `offset` go in the query string (the `next` link repeats "
            "them: POST the picture again for another page). A bad upload is 400 (empty, "
            "broken, too many pixels), 413 (too large) or 415 (not an image or a format not "
            "allowed). If the image encoder is down: 503, or with `q` the words answer alone "
            "(200 with `degraded.image`). Throttle scope: `clip_search_image`, stricter than "
            "`clip_search`."),
        request={"multipart/form-data": ImageSearchSerializer},
        parameters=[ResultParamsSerializer])
    def post(self, request: Request, version: str) -> Response:
        _refuse_oversized_body(request)
        body = self.validated(ImageSearchSerializer, request.data)
        params = self.result_params()
        data = _read_upload(body["image"])
        results = self.search_by_image(self.filter_queryset(self.get_queryset()), data, body["q"])
        return self.respond(results, params)

    def search_by_image(self, queryset: models.QuerySet, data: bytes, text: str) -> models.QuerySet:
        """A rejected image is the client's error, a database error the database's (answered by
        the exception handler: 503 to retry when it is down); any other failure is the encoder's."""
        try:
            return self.search(queryset, text=text or None, image=data)
        except (ImageRejected, SearchError, DatabaseError, InterfaceError):
            raise
        except Exception as error:
            logger.exception("clip_search API: image search failed")
            if not text:
                raise ImageSearchUnavailable() from error
            reason = str(_("Image search is unavailable: %(error)s") % {"error": error})
        try:
            results = self.search(queryset, text=text)
        except (DatabaseError, InterfaceError):
            raise
        except Exception as error:
            logger.exception("clip_search API: text fallback of an image search failed")
            raise ImageSearchUnavailable() from error
        results.search_info.degraded["image"] = reason
        return results


def _refuse_oversized_body(request: Request) -> None:
    """413 from the Content-Length alone, before a byte of a huge upload is parsed."""
    limit = clip_settings.IMAGE["MAX_BYTES"]
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if length > limit + MULTIPART_SLACK:
        raise ImageRejected("too_large", str(_("The upload is %(size)d bytes; the limit is %(limit)d.")
                                             % {"size": length, "limit": limit}))


def _read_upload(upload: Any) -> bytes:
    limit = clip_settings.IMAGE["MAX_BYTES"]
    if upload.size > limit:
        raise ImageRejected("too_large", str(_("The file is %(size)d bytes; the limit is %(limit)d.")
                                             % {"size": upload.size, "limit": limit}))
    return upload.read()


class SimilarView(StorefrontView):
    error_responses = {400: None, 404: None, 409: None, 429: None}
    log_kind = SearchRecord.Kind.SIMILAR

    @api_operation(
        operation_id="products_similar", tags=["search"], summary=_("More like this product"),
        description=_(
            "Products whose pictures are closest to this one's, the product itself excluded, "
            "with the shop's filters. 404 for a product the storefront does not show (or one "
            "quarantined), 409 `not_indexed` while its picture is not embedded yet. Throttle "
            "scope: `clip_search`."),
        parameters=[
            OpenApiParameter("product_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                             description=_("The product's primary key.")),
            ResultParamsSerializer])
    def get(self, request: Request, version: str, product_id: str) -> Response:
        params = self.result_params()
        product = self.get_product(product_id)
        try:
            results = self.search(self.filter_queryset(self.get_queryset()), like=product)
        except SearchError as error:
            raise NotIndexed(str(error)) from error
        return self.respond(results, params)

    def get_product(self, pk: str) -> models.Model:
        """The shown product whose picture may be searched by; 404 hides the rest."""
        try:
            product = self.get_queryset().filter(pk=pk).first()
        except (ValueError, TypeError, DjangoValidationError):
            product = None
        status = product and Embedding.objects.for_object(product).active().values_list(
            "status", flat=True).first()
        if product is None or status in (Embedding.Status.FLAGGED, Embedding.Status.REJECTED):
            raise exceptions.NotFound(_("No such product."))
        if status != Embedding.Status.INDEXED:
            raise NotIndexed()
        return product


class SuggestView(ApiView):
    """Search-as-you-type: completions from the catalog's titles, brands and categories."""

    throttle_scope = SUGGEST_SCOPE
    serializer_class = SuggestionsSerializer
    success_description = _("Completions, most products first.")
    error_responses = {400: None, 429: None}

    @api_operation(
        operation_id="suggest", tags=["search"], summary=_("Complete what the shopper is typing"),
        description=_(
            "Titles, brands and categories whose words start with what is typed (\"red ba\" → "
            "\"Red backpack\"), most products first; when none does, the nearest by spelling "
            "(\"bakcpack\"). Only phrases of products the storefront shows. With an empty `q`, the "
            "most common categories and brands. Throttle scope: `clip_search_suggest`."),
        parameters=[SuggestParamsSerializer])
    def get(self, request: Request, version: str) -> Response:
        params = self.validated(SuggestParamsSerializer, request.query_params)
        registration = storefront_registration()
        completions = lexicon.suggest(registration, params["q"], limit=params.get("limit"),
                                      using=registration.get_queryset().db)
        return Response(SuggestionsSerializer({"query": params["q"], "suggestions": completions}).data)


class PlainTextJSONParser(JSONParser):
    """``navigator.sendBeacon(url, JSON.stringify(event))`` sends its string as text/plain."""

    media_type = "text/plain"


class EventsView(ApiView):
    """What a shopper did with a search result: the search log's clicks, carts and purchases."""

    parser_classes = [JSONParser, PlainTextJSONParser, FormParser, MultiPartParser]
    # No session authentication: a beacon cannot send a CSRF token, and an event needs no user.
    authentication_classes: list[Any] = []
    throttle_scope = EVENTS_SCOPE
    serializer_class = EventRecordedSerializer
    success_description = _("The event was recorded.")
    error_responses = {400: _(
        "Invalid (`invalid`), or not tied to a search: `unknown_search` (no such search, or older "
        "than the log keeps), `not_in_results` (the search did not show that product), "
        "`wrong_position` (it showed it elsewhere)."), 429: None}

    @api_operation(
        operation_id="events_create", tags=["search"], summary=_("Record what a shopper did with a result"),
        description=_(
            "A click, an add to cart or a purchase of a product a search showed, named by the "
            "search's `search_id` and the product's position (the search log checks both). Send it "
            "with `navigator.sendBeacon` (JSON as text/plain is accepted) or as JSON or a form. "
            "The shop's analytics and `clip_eval` read them. Throttle scope: `clip_search_events`."),
        request=EventSerializer)
    def post(self, request: Request, version: str) -> Response:
        if not searchlog.enabled():
            raise exceptions.NotFound(_("This shop keeps no search log."))
        event = self.validated(EventSerializer, request.data)
        try:
            recorded = searchlog.add_event(event["search_id"], event["kind"], event["product_id"],
                                           event.get("position"))
        except searchlog.EventRefused as error:
            raise EventNotTied(str(error), code=error.code) from error
        return Response(EventRecordedSerializer({"recorded": True, "position": recorded.position}).data)


class ReviewView(ApiView):
    """``REVIEW_PERMISSION_CLASSES`` (by default ``ReviewPermission``: Django's model permissions on
    review items, view to list and change to decide); not throttled here."""

    permission_option = "REVIEW_PERMISSION_CLASSES"
    serializer_class = ReviewItemSerializer

    def get_queryset(self) -> models.QuerySet:
        return ReviewItem.objects.select_related("embedding__content_type", "image")

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "products": getattr(self, "products", {})}

    def load_products(self, items: list[ReviewItem]) -> None:
        """The items' products in one query per model, for their names and pictures."""
        wanted: dict[int, list[str]] = defaultdict(list)
        for item in items:
            wanted[item.embedding.content_type_id].append(item.embedding.object_pk)
        self.products = {}
        for content_type_id, pks in wanted.items():
            model = ContentType.objects.get_for_id(content_type_id).model_class()
            if model is None or not registry.is_registered(model):
                continue
            registration = registry.get(model)
            for obj in registration.fetch(pks):
                self.products[(content_type_id, str(obj.pk))] = (obj, registration)


class ReviewListView(ReviewView):
    pagination_class = ApiPagination
    many_results = True
    success_description = _("A page of open review items.")
    error_responses = {400: None, 401: None, 403: None}

    @api_operation(
        operation_id="review_list", tags=["review"], summary=_("Open review items"),
        description=_("Quarantined (flagged) and sampled uploads waiting for a staff decision, "
                      "newest first. Needs the `clip_search.view_reviewitem` (or "
                      "`change_reviewitem`) permission."),
        parameters=[ReviewListParamsSerializer])
    def get(self, request: Request, version: str) -> Response:
        params = self.validated(ReviewListParamsSerializer, request.query_params)
        items = self.get_queryset().filter(status=ReviewItem.Status.OPEN)
        if params.get("reason"):
            items = items.filter(reason=params["reason"])
        page = self.paginate_queryset(items)
        self.load_products(page)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class ReviewDecisionView(ReviewView):
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    success_description = _("The decided item.")
    error_responses = {400: None, 401: None, 403: None, 404: None,
                       409: _("Already decided (`already_decided`), or the product no longer has the "
                              "reviewed image (`image_changed`: the item is closed as superseded).")}
    decision = "approve"  # the clip_search.moderation function

    def post(self, request: Request, version: str, item_id: int) -> Response:
        note = self.validated(ReviewDecisionSerializer, request.data)["note"]
        item = self.get_queryset().filter(pk=item_id).first()
        if item is None:
            raise exceptions.NotFound(_("No such review item."))
        try:
            item = getattr(moderation, self.decision)(item, user=request.user, note=note)
        except moderation.ImageChanged as error:
            raise ImageChanged() from error
        except moderation.DecisionRefused as error:
            raise AlreadyDecided() from error
        item = self.get_queryset().get(pk=item.pk)
        self.load_products([item])
        return Response(self.get_serializer(item).data)


ITEM_ID = OpenApiParameter("item_id", OpenApiTypes.INT, OpenApiParameter.PATH,
                           description=_("The review item's id."))


class ReviewApproveView(ReviewDecisionView):
    decision = "approve"

    @api_operation(
        operation_id="review_approve", tags=["review"], summary=_("Approve a review item"),
        description=_("The upload is fine: a flagged product becomes searchable. Needs the "
                      "`clip_search.change_reviewitem` permission."),
        request=ReviewDecisionSerializer, parameters=[ITEM_ID])
    def post(self, request: Request, version: str, item_id: int) -> Response:
        return super().post(request, version, item_id)


class ReviewRejectView(ReviewDecisionView):
    decision = "reject"

    @api_operation(
        operation_id="review_reject", tags=["review"], summary=_("Reject a review item"),
        description=_("The upload is not acceptable: the product stays out of search until it "
                      "gets a new picture. Needs the `clip_search.change_reviewitem` permission."),
        request=ReviewDecisionSerializer, parameters=[ITEM_ID])
    def post(self, request: Request, version: str, item_id: int) -> Response:
        return super().post(request, version, item_id)


class UnknownRouteView(APIView):
    """Any other path under the API's prefix: the API's 404 error body, not the site's HTML page
    (e.g. ``review/abc/approve/``, which ``<int:item_id>`` does not match). Not in the schema."""

    schema = None  # DRF's "exclude from any schema": else the shop's DEFAULT_SCHEMA_CLASS inspects it
    def get_exception_handler(self) -> Callable[..., Response | None]:
        return api_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        raise exceptions.NotFound()


SCHEMA_SETTINGS = {
    "TITLE": "clip_search storefront API",
    "DESCRIPTION": (
        "Product search (words, pictures, more like this) and the staff review queue. Every "
        "error is `{\"error\": {\"code\", \"message\", \"detail\"}}`. Throttle scopes: "
        "`clip_search` (search, similar) and `clip_search_image` (image search)."),
    "VERSION": "1",
    "PREPROCESSING_HOOKS": ["clip_search.api.schema.api_endpoints_only"],
    "COMPONENT_SPLIT_REQUEST": True,  # file uploads as binary in request bodies
}


class SchemaView(SpectacularAPIView):
    """The OpenAPI 3 document of this API alone (YAML, or JSON with ``?format=json``).

    ``schema = None`` (here and on ``DocsView``) leaves both out of every schema, the shop's own
    included: drf-spectacular documents them with a schema class built on the DEFAULT_SCHEMA_CLASS
    of import time, which, left at DRF's default, fails the shop's schema generation and its
    ``check --deploy`` (drf_spectacular.E001) over views that document nothing of the API."""

    versioning_class = ApiVersioning
    schema = None
    custom_settings = SCHEMA_SETTINGS


class DocsView(SpectacularSwaggerView):
    """Swagger UI over ``SchemaView`` (offline with drf-spectacular-sidecar, SWAGGER_UI_DIST)."""

    versioning_class = ApiVersioning
    schema = None
    url_name = "clip_search_api:schema"
    title = SCHEMA_SETTINGS["TITLE"]
