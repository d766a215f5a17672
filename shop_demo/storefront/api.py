"""What the demo shop plugs into clip_search.api: its result serializer and its filters.

Named in settings (``CLIP_SEARCH_API``); a real shop writes the same two classes. Category, brand,
price bands and stock are facets there (counted, and selected as ``?category=mug``); the
FilterSet keeps what a shopper types: a price range of their own.
"""

from django.utils.translation import gettext_lazy as _
from django_filters import rest_framework as filters
from rest_framework import serializers

from clip_search.api.serializers import ImageUrlField
from shop_demo.catalog.models import Product


class ProductSerializer(serializers.ModelSerializer):
    brand = serializers.CharField(source="brand.name", read_only=True)
    category = serializers.CharField(source="category.name", read_only=True)
    image = ImageUrlField(help_text=_("The URL of the product's first photo."))

    class Meta:
        model = Product
        fields = ["id", "title", "sku", "brand", "category", "price", "in_stock", "image"]
        read_only_fields = fields


class ProductFilterSet(filters.FilterSet):
    min_price = filters.NumberFilter(field_name="price", lookup_expr="gte",
                                     help_text=_("Lowest price, inclusive."))
    max_price = filters.NumberFilter(field_name="price", lookup_expr="lte",
                                     help_text=_("Highest price, inclusive."))

    class Meta:
        model = Product
        fields = ["min_price", "max_price"]
