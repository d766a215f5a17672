"""What the demo shop plugs into clip_search.api: its result serializer and its filters.

Named in settings (``CLIP_SEARCH_API``); a real shop writes the same two classes.
"""

from django.utils.translation import gettext_lazy as _
from django_filters import rest_framework as filters
from rest_framework import serializers

from clip_search.api.serializers import ImageUrlField
from shop_demo.catalog.models import Category, Product


class ProductSerializer(serializers.ModelSerializer):
    brand = serializers.CharField(source="brand.name", read_only=True)
    category = serializers.CharField(source="category.name", read_only=True)
    image = ImageUrlField(help_text=_("The URL of the product's first photo."))

    class Meta:
        model = Product
        fields = ["id", "title", "sku", "brand", "category", "price", "in_stock", "image"]
        read_only_fields = fields


class ProductFilterSet(filters.FilterSet):
    category = filters.ModelChoiceFilter(
        field_name="category", to_field_name="slug", queryset=Category.objects.all(),
        help_text=_("A category slug, e.g. mug."))
    brand = filters.CharFilter(field_name="brand__name", lookup_expr="iexact",
                               help_text=_("A brand name (any case)."))
    min_price = filters.NumberFilter(field_name="price", lookup_expr="gte",
                                     help_text=_("Lowest price, inclusive."))
    max_price = filters.NumberFilter(field_name="price", lookup_expr="lte",
                                     help_text=_("Highest price, inclusive."))
    in_stock = filters.BooleanFilter(help_text=_("true: only products in stock."))

    class Meta:
        model = Product
        fields = ["category", "brand", "min_price", "max_price", "in_stock"]
