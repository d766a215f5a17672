"""Product tags over DRF, for staff tools: a product's tags, fresh suggestions, decisions.

``TAG_PERMISSION_CLASSES`` (by default ``TagPermission``: Django's model permissions on
``ProductTag``, view to list and change to suggest or decide). The products are those of the
storefront's registered model (``CLIP_SEARCH_API["MODEL"]``), every one of them, shown or not:
tagging is back-office work.
"""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from clip_search import tagging
from clip_search.api.conf import storefront_registration
from clip_search.api.errors import NotIndexed
from clip_search.api.schema import api_operation
from clip_search.api.views import ApiView
from clip_search.models import ProductTag

FORBIDDEN = _("Not logged in (session authentication), or without the permission the route needs: "
              "`clip_search.view_producttag` (or `change_producttag`) to list tags, `change_producttag` to "
              "suggest, accept or reject them.")


class TagSerializer(serializers.ModelSerializer):
    set = serializers.CharField(source="label_set",
                                help_text=_("The label set (CLIP_SEARCH['TAGGING']['SETS'])."))
    encoder = serializers.IntegerField(source="encoder_id", allow_null=True,
                                       help_text=_("The encoder model that suggested it."))
    decided_by = serializers.SerializerMethodField(
        help_text=_("Who accepted or rejected it (empty: nobody yet)."))

    class Meta:
        model = ProductTag
        fields = ["id", "set", "label", "confidence", "status", "encoder", "suggested_at", "decided_by",
                  "decided_at"]
        read_only_fields = fields

    def get_decided_by(self, tag: ProductTag) -> str:
        return tag.decided_by.get_username() if tag.decided_by else tag.decided_by_name


class ProductTagsSerializer(serializers.Serializer):
    product = serializers.CharField(help_text=_("The product's primary key."))
    tags = TagSerializer(many=True, help_text=_("By set, most confident first."))


class ProductTagsParamsSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ProductTag.Status.choices, required=False,
                                     help_text=_("Only tags with this status."))
    set = serializers.CharField(required=False, max_length=64, help_text=_("Only tags of this label set."))


PRODUCT_ID = OpenApiParameter("product_id", OpenApiTypes.STR, OpenApiParameter.PATH,
                              description=_("The product's primary key."))


class TagView(ApiView):
    permission_option = "TAG_PERMISSION_CLASSES"
    error_responses = {400: None, 401: None, 403: FORBIDDEN, 404: None}


class ProductTagView(TagView):
    """A product's tags: the product (any of the registered model's: staff tag what is not
    shown yet too) and its tags, by set, most confident first."""

    serializer_class = ProductTagsSerializer

    def product(self, pk: str) -> models.Model:
        model = storefront_registration().model
        try:
            product = model._default_manager.filter(pk=pk).first()
        except (ValueError, TypeError, DjangoValidationError):
            product = None
        if product is None:
            raise exceptions.NotFound(_("No such product."))
        return product

    def tags(self, product: models.Model) -> models.QuerySet:
        content_type = ContentType.objects.get_for_model(product, for_concrete_model=False)
        return (ProductTag.objects.filter(content_type=content_type, object_pk=str(product.pk))
                .select_related("decided_by").order_by("label_set", "-confidence", "label"))

    def respond(self, product_id: str, tags: models.QuerySet) -> Response:
        return Response(ProductTagsSerializer({"product": product_id, "tags": tags}).data)


class ProductTagsView(ProductTagView):
    success_description = _("The product's tags.")

    @api_operation(
        operation_id="products_tags", tags=["tags"], summary=_("A product's tags"),
        description=_("Its suggested, accepted and rejected tags, each with the model's confidence, by set. "
                      "Needs the `clip_search.view_producttag` (or `change_producttag`) permission."),
        parameters=[PRODUCT_ID, ProductTagsParamsSerializer])
    def get(self, request: Request, version: str, product_id: str) -> Response:
        params = self.validated(ProductTagsParamsSerializer, request.query_params)
        tags = self.tags(self.product(product_id))
        if params.get("status"):
            tags = tags.filter(status=params["status"])
        if params.get("set"):
            tags = tags.filter(label_set=params["set"])
        return self.respond(product_id, tags)


class ProductTagsSuggestView(ProductTagView):
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    success_description = _("The product's tags, with the new suggestions.")
    error_responses = {**TagView.error_responses, 409: _(
        "The product has no embedded image yet (`not_indexed`): nothing to score.")}

    @api_operation(
        operation_id="products_tags_suggest", tags=["tags"], summary=_("Suggest tags for a product now"),
        description=_("Scores the product's stored image vectors against every label set (no image is "
                      "read) and stores the labels at or over MIN_CONFIDENCE as suggestions; suggestions "
                      "the model no longer makes are withdrawn, staff decisions stay. Needs the "
                      "`clip_search.change_producttag` permission."),
        request=None, parameters=[PRODUCT_ID])
    def post(self, request: Request, version: str, product_id: str) -> Response:
        product = self.product(product_id)
        if tagging.suggest(storefront_registration(), [product.pk]).without_vectors:
            raise NotIndexed()
        return self.respond(product_id, self.tags(product))


class TagDecisionView(TagView):
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    serializer_class = TagSerializer
    success_description = _("The tag, decided (deciding it the same way again changes nothing).")
    decision = "accept"  # the clip_search.tagging function

    def post(self, request: Request, version: str, tag_id: int) -> Response:
        tag = ProductTag.objects.filter(pk=tag_id).first()
        if tag is None:
            raise exceptions.NotFound(_("No such tag."))
        getattr(tagging, self.decision)([tag], user=request.user)
        return Response(TagSerializer(ProductTag.objects.select_related("decided_by").get(pk=tag.pk)).data)


TAG_ID = OpenApiParameter("tag_id", OpenApiTypes.INT, OpenApiParameter.PATH, description=_("The tag's id."))


class TagAcceptView(TagDecisionView):
    decision = "accept"

    @api_operation(
        operation_id="tags_accept", tags=["tags"], summary=_("Accept a tag"),
        description=_("The product has this label: it joins the product's full-text document and the "
                      "tag facets. Needs the `clip_search.change_producttag` permission."),
        request=None, parameters=[TAG_ID])
    def post(self, request: Request, version: str, tag_id: int) -> Response:
        return super().post(request, version, tag_id)


class TagRejectView(TagDecisionView):
    decision = "reject"

    @api_operation(
        operation_id="tags_reject", tags=["tags"], summary=_("Reject a tag"),
        description=_("The product does not have this label: it is never suggested again for this "
                      "product. Needs the `clip_search.change_producttag` permission."),
        request=None, parameters=[TAG_ID])
    def post(self, request: Request, version: str, tag_id: int) -> Response:
        return super().post(request, version, tag_id)
