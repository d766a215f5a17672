"""Request parameters, results and errors of the API, as DRF serializers (and so as OpenAPI).

A result is the shop's own serializer (``CLIP_SEARCH_API["SERIALIZER"]``, or a default of
pk, name, image URL and ``FIELDS``) extended with the fused ``score``, ``rank`` and ``explain``.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from clip_search.api.conf import api_options, imported
from clip_search.models import ReviewItem, SearchEvent
from clip_search.moderation import reviewed_image_url
from clip_search.registry import Registration, read_path, registry

# --------------------------------------------------------------------------- parameters


class ResultParamsSerializer(serializers.Serializer):
    """What every storefront search takes besides its query: how to show the hits."""

    explain = serializers.BooleanField(
        default=False, help_text=_("Add each hit's evidence per search leg (`explain`)."))
    highlight = serializers.BooleanField(
        default=False, help_text=_("Add the hit's text fields with the matched words in <mark> (`highlight`, "
                                   "escaped HTML)."))
    sort = serializers.CharField(
        default="relevance", max_length=50,
        help_text=_("relevance (the default), or an order the shop offers (`sorts` in the response)."))


class SearchParamsSerializer(ResultParamsSerializer):
    q = serializers.CharField(
        help_text=_("What to look for: words, a SKU or brand, quotes for a phrase, -word to exclude."))
    correct = serializers.BooleanField(
        default=True, help_text=_("false: search the words as typed (no spelling correction; "
                                  "`did_you_mean` then stays null)."))


class SuggestParamsSerializer(serializers.Serializer):
    q = serializers.CharField(required=False, allow_blank=True, default="", max_length=200, help_text=_(
        "What the shopper has typed so far. Empty: the most common categories and brands."))
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, help_text=_(
        "Completions wanted (default CLIP_SEARCH['SUGGEST']['LIMIT'], at most its MAX_LIMIT)."))


class EventSerializer(serializers.Serializer):
    search_id = serializers.UUIDField(help_text=_("The `search_id` of the search the product was shown by."))
    kind = serializers.ChoiceField(choices=SearchEvent.Kind.choices, help_text=_("What the shopper did."))
    product_id = serializers.CharField(max_length=64, help_text=_("The product's primary key."))
    position = serializers.IntegerField(required=False, min_value=1, help_text=_(
        "Where the search showed it, 1 for the first result (checked against the search's log)."))


class EventRecordedSerializer(serializers.Serializer):
    recorded = serializers.BooleanField(help_text=_("Always true: the event is in the search log."))
    position = serializers.IntegerField(help_text=_("Where the search showed the product (1: first)."))


class CompletionSerializer(serializers.Serializer):
    text = serializers.CharField(help_text=_("The completion, as the catalog writes it."))
    kind = serializers.CharField(help_text=_(
        "What it is: title, brand, category (the shop's suggest= kinds)."))
    products = serializers.IntegerField(help_text=_("How many products it was found in."))


class SuggestionsSerializer(serializers.Serializer):
    query = serializers.CharField()
    suggestions = CompletionSerializer(many=True)


class ImageSearchSerializer(serializers.Serializer):
    image = serializers.FileField(
        allow_empty_file=False,
        help_text=_("The picture to search by: JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF, at most "
                    "CLIP_SEARCH['IMAGE']['MAX_BYTES'] bytes (20 MiB by default)."))
    q = serializers.CharField(
        required=False, allow_blank=True, default="",
        help_text=_("Optional words to search for together with the picture (their vectors are "
                    "averaged and the words also match text and keywords)."))


class ReviewListParamsSerializer(serializers.Serializer):
    reason = serializers.ChoiceField(
        choices=ReviewItem.Reason.choices, required=False,
        help_text=_("Only items quarantined for this reason."))


class ReviewDecisionSerializer(serializers.Serializer):
    note = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=2000,
        help_text=_("Why, for the audit trail."))


# --------------------------------------------------------------------------- errors


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text=_(
        "Stable, machine-readable: invalid, parse_error, bad_request, not_authenticated, "
        "authentication_failed, permission_denied, not_found, method_not_allowed, "
        "unsupported_media_type, throttled, not_indexed, already_decided, "
        "image_search_unavailable, unavailable, unknown_search, not_in_results, wrong_position, "
        "or an image rejection: empty, too_large, not_an_image, format, broken, too_many_pixels."))
    message = serializers.CharField(help_text=_("For people; translated."))
    detail = serializers.JSONField(allow_null=True, help_text=_(
        "Field errors for `invalid` ({field: [messages]}), {\"retry_after\": seconds} for "
        "`throttled` and `unavailable`, else null."))


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# --------------------------------------------------------------------------- results


@extend_schema_field({"type": "string", "format": "uri", "nullable": True})
class ImageUrlField(serializers.Field):
    """The absolute URL of an image of the object, or null.

    ``ImageUrlField()``: the first of the object's registered images (display order);
    ``ImageUrlField("brand__logo")``: the file at that path. Null for no image, or for an
    image a callable gives as bytes (it has no URL).
    """

    def __init__(self, path: str | Registration | None = None, **kwargs: Any) -> None:
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)
        self.path = path

    def to_representation(self, obj: models.Model) -> str | None:
        if isinstance(self.path, str):
            file = read_path(obj, self.path)
            url = file.url if file else None
        else:
            url = (self.path or registry.get(type(obj))).image_url(obj)
        return absolute(url, self.context.get("request"))


def absolute(url: str | None, request: Any = None) -> str | None:
    """Absolute when there is a request, so a client on another host can load it."""
    if not url:
        return None
    return request.build_absolute_uri(url) if request else url


class VectorEvidenceSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    cosine_distance = serializers.FloatField()


class FulltextEvidenceSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    ts_rank = serializers.FloatField()


class KeywordEvidenceSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    exact = serializers.BooleanField(help_text=_(
        "The whole query, or an identifier in it (a SKU), is one of the product's keyword values."))
    named = serializers.BooleanField(help_text=_(
        "A keyword value of the product (a brand) is named inside the query, and the product has its "
        "other words too."))
    similarity = serializers.FloatField(allow_null=True, help_text=_("Trigram word similarity."))


class ExplainSerializer(serializers.Serializer):
    """Why a product is a hit: each leg's rank and raw measure (null: the leg did not find it)."""

    score = serializers.FloatField()
    vector = VectorEvidenceSerializer(allow_null=True)
    fulltext = FulltextEvidenceSerializer(allow_null=True)
    keyword = KeywordEvidenceSerializer(allow_null=True)


@extend_schema_field(ExplainSerializer(allow_null=True))
class ExplainField(serializers.Field):
    """``search_info.explain(obj)`` when the request asked for it (``?explain=1``), else null."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, obj: models.Model) -> dict[str, Any] | None:
        info = self.context.get("search_info")
        return info.explain(obj) if info is not None and self.context.get("explain") else None


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}, "nullable": True})
class HighlightField(serializers.Field):
    """{field: escaped HTML with the matched words in <mark>} when asked (``?highlight=1``), else null."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.update(source="*", read_only=True)
        super().__init__(**kwargs)

    def to_representation(self, obj: models.Model) -> dict[str, str] | None:
        highlights = self.context.get("highlights")
        return None if highlights is None else highlights.get(str(obj.pk), {})


HIT_FIELDS = ("score", "rank", "explain", "highlight")
_serializers: dict[Any, type[serializers.Serializer]] = {}


def default_serializer_class(registration: Registration, fields: tuple[str, ...] = ()) -> type:
    """pk, name (``str()``), the first registered image's URL and ``fields``, for any model."""
    model = registration.model
    meta = type("Meta", (), {"model": model, "fields": ["pk", "name", "image", *fields]})
    return type(f"{model.__name__}ResultSerializer", (serializers.ModelSerializer,), {
        "Meta": meta,
        "name": serializers.CharField(source="__str__", read_only=True),
        "image": ImageUrlField(registration, help_text=_("The product's first picture.")),
    })


def hit_serializer_class(base: type[serializers.Serializer], model: type[models.Model]) -> type:
    """``base`` plus ``score``, ``rank`` and ``explain``: one result of a search."""
    attrs: dict[str, Any] = {
        "score": serializers.FloatField(source="search_score", read_only=True, help_text=_(
            "Fused score: the sum over legs of weight / (RRF_K + rank), plus 1 for an exact "
            "keyword match. Only comparable within one search.")),
        "rank": serializers.IntegerField(source="search_rank", read_only=True,
                                         help_text=_("1 for the best hit.")),
        "explain": ExplainField(),
        "highlight": HighlightField(help_text=_(
            "The text fields with the words the query matched in <mark>, as escaped HTML (with "
            "`highlight=1`; else null).")),
    }
    meta = getattr(base, "Meta", None)
    fields = getattr(meta, "fields", None)
    if isinstance(fields, (list, tuple)):  # a ModelSerializer must list declared fields
        attrs["Meta"] = type("Meta", (meta,), {"fields": [*fields, *HIT_FIELDS]})
    return type(f"{model.__name__}HitSerializer", (base,), attrs)


def result_serializer_class(registration: Registration) -> type[serializers.Serializer]:
    """The hit serializer for the registration's options, built once per configuration."""
    options = api_options(registration)
    key = (registration.label, options["SERIALIZER"], tuple(options["FIELDS"]))
    if key not in _serializers:
        base = (imported(options["SERIALIZER"]) if options["SERIALIZER"]
                else default_serializer_class(registration, tuple(options["FIELDS"])))
        _serializers[key] = hit_serializer_class(base, registration.model)
    return _serializers[key]


# --------------------------------------------------------------------------- review queue


class ReviewProductSerializer(serializers.Serializer):
    pk = serializers.CharField()
    name = serializers.CharField()
    image = serializers.URLField(allow_null=True)


class ReviewImageSerializer(serializers.Serializer):
    name = serializers.CharField(help_text=_("The image's storage name."))
    position = serializers.IntegerField(allow_null=True, help_text=_("0 for the product's first image."))
    url = serializers.URLField(allow_null=True)
    current = serializers.BooleanField(help_text=_(
        "The product still holds this image: a decision applies only then (409 `image_changed` else)."))


class ReviewItemSerializer(serializers.ModelSerializer):
    """An open (or just decided) quarantine item with what staff need to decide: the very image
    that was flagged (a product may have several)."""

    model = serializers.SerializerMethodField(help_text=_("The product's model label, e.g. catalog.product."))
    object_pk = serializers.CharField(source="embedding.object_pk", read_only=True)
    embedding_status = serializers.CharField(source="embedding.status", read_only=True)
    product = serializers.SerializerMethodField(help_text=_("Null when the product was deleted."))
    image = serializers.SerializerMethodField(help_text=_("The reviewed image."))

    class Meta:
        model = ReviewItem
        fields = ["id", "model", "object_pk", "product", "image", "reason", "categories", "scores", "status",
                  "embedding_status", "created_at", "decided_at"]
        read_only_fields = fields

    def get_model(self, item: ReviewItem) -> str:
        content_type = item.embedding.content_type
        return f"{content_type.app_label}.{content_type.model}"

    def _product(self, item: ReviewItem) -> tuple[models.Model, Registration] | None:
        """``context["products"]``: {(content type id, object pk): (product, registration)}."""
        key = (item.embedding.content_type_id, item.embedding.object_pk)
        return self.context.get("products", {}).get(key)

    @extend_schema_field(ReviewProductSerializer(allow_null=True))
    def get_product(self, item: ReviewItem) -> dict[str, Any] | None:
        found = self._product(item)
        if found is None:
            return None
        obj, registration = found
        return {"pk": str(obj.pk), "name": str(obj),
                "image": absolute(registration.image_url(obj), self.context.get("request"))}

    @extend_schema_field(ReviewImageSerializer())
    def get_image(self, item: ReviewItem) -> dict[str, Any]:
        found = self._product(item)
        url = reviewed_image_url(item, *found) if found else None
        current = item.image is not None and item.image.sha256 == item.image_sha256
        return {"name": item.image_name, "position": item.image.position if current else None,
                "url": absolute(url, self.context.get("request")), "current": current}
