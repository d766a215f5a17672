"""Fill the demo shop's tables from the drawn catalog (the demo loader and the tests share it)."""

from __future__ import annotations

from django.core.files.base import ContentFile

from shop_demo.catalog.generator import CATEGORY_LABELS, ProductSpec, generate_catalog
from shop_demo.catalog.models import Brand, Category, Product


def create_product(spec: ProductSpec, *, image_size: int = 64, image: bytes | None = None) -> Product:
    brand, _ = Brand.objects.get_or_create(name=spec.brand)
    category, _ = Category.objects.get_or_create(
        slug=spec.category, defaults={"name": CATEGORY_LABELS[spec.category]})
    product = Product(title=spec.title, description=spec.description, sku=spec.sku, brand=brand,
                      category=category, price=spec.price, in_stock=spec.in_stock, is_public=spec.is_public)
    data = spec.png_bytes(image_size) if image is None else image
    if data:
        extension = "jpg" if data[:3] == b"\xff\xd8\xff" else "png"
        product.image.save(f"{spec.sku}.{extension}", ContentFile(data), save=False)
    product.save()
    return product


def create_catalog(n: int, seed: int = 7, **options) -> list[Product]:
    return [create_product(spec, **options) for spec in generate_catalog(n, seed=seed)]
