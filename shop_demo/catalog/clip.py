"""The demo shop's clip_search registration: all a shop writes besides settings and urls."""

import clip_search
from shop_demo.catalog.models import Product

clip_search.register(
    Product,
    image="image",
    text=["title", "description", "category__name"],
    keywords=["sku", "brand__name"],
    queryset=lambda: Product.objects.filter(is_public=True),
)
