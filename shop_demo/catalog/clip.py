"""The demo shop's clip_search registration: all a shop writes besides settings and urls."""

import clip_search
from shop_demo.catalog.models import Category, Product

clip_search.register(
    Product,
    # The main picture, then the gallery rows in their display order. Saving or deleting a
    # gallery row re-embeds its product (clip_search watches the model the path goes through).
    images=["image", "gallery__image"],
    text=["title", "description", "category__name"],
    keywords=["sku", "brand__name"],
    # What search-as-you-type offers as the shopper types.
    suggest={"title": "title", "brand": "brand__name", "category": "category__name"},
    queryset=lambda: Product.objects.filter(is_public=True),
)


def category_labels() -> dict[str, list[str]]:
    """The "category" label set of CLIP_SEARCH["TAGGING"]: the shop's category names, each
    prompted by its slug ("T-shirts" as "a photo of a t-shirt"), read from its own table."""
    return {category.name: [category.slug] for category in Category.objects.order_by("name")}
