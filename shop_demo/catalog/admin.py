from django.contrib import admin

from clip_search.admin import ClipSearchAdminMixin
from shop_demo.catalog.models import Brand, Category, Product, ProductImage


@admin.register(Brand)
class BrandAdmin(admin.ModelAdmin):
    search_fields = ["name"]


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    search_fields = ["name"]
    prepopulated_fields = {"slug": ["name"]}


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 1
    fields = ["image", "display_order", "caption"]


@admin.register(Product)
class ProductAdmin(ClipSearchAdminMixin, admin.ModelAdmin):
    """The shop's own admin; the mixin adds hybrid search, image search, statuses and re-embedding."""

    list_display = ["title", "sku", "brand", "category", "price", "in_stock", "is_public"]
    list_filter = ["category", "brand", "in_stock", "is_public"]
    search_fields = ["title", "sku", "brand__name"]  # the fallback when nothing is indexed
    autocomplete_fields = ["brand", "category"]
    inlines = [ProductImageInline]
