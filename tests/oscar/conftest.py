"""A small Oscar catalogue: a product class with attributes, a category, a partner, staff."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from oscar.core.loading import get_model

from clip_search.indexing import embed_objects, register_encoder
from clip_search.registry import registry

Product = get_model("catalogue", "Product")
ProductClass = get_model("catalogue", "ProductClass")
ProductAttribute = get_model("catalogue", "ProductAttribute")
AttributeOptionGroup = get_model("catalogue", "AttributeOptionGroup")
AttributeOption = get_model("catalogue", "AttributeOption")
Category = get_model("catalogue", "Category")
Partner = get_model("partner", "Partner")
StockRecord = get_model("partner", "StockRecord")
ProductImage = get_model("catalogue", "ProductImage")


@pytest.fixture
def shop(db, media):
    """Oscar's catalogue set up the way its dashboard expects a shop to have it."""
    colours = AttributeOptionGroup.objects.create(name="Colour")
    options = {name: AttributeOption.objects.create(group=colours, option=name) for name in ("Red", "Blue")}
    shirt = ProductClass.objects.create(name="T-shirt", slug="t-shirt")
    ProductAttribute.objects.create(product_class=shirt, name="Colour", code="colour", type="option",
                                    option_group=colours)
    ProductAttribute.objects.create(product_class=shirt, name="Material", code="material", type="text")
    ProductAttribute.objects.create(product_class=shirt, name="Brand", code="brand", type="text")
    category = Category.add_root(name="Clothes")
    partner = Partner.objects.create(name="Acme")
    staff = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw")
    register_encoder()
    return {"class": shirt, "options": options, "category": category, "partner": partner, "staff": staff}


def upload(data: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/png")


def dashboard_form(shop: dict, **fields) -> dict:
    """Oscar's dashboard product form with its formsets (category, images, stock, recommended)."""
    form = {
        "title": "Plain shirt", "upc": "", "description": "A shirt from the dashboard.", "is_public": "on",
        "structure": "standalone", "slug": "", "attr_colour": str(shop["options"]["Red"].pk),
        "attr_material": "cotton", "attr_brand": "Nordhaus",
        "productcategory_set-TOTAL_FORMS": "1", "productcategory_set-INITIAL_FORMS": "0",
        "productcategory_set-0-category": str(shop["category"].pk),
        "images-TOTAL_FORMS": "0", "images-INITIAL_FORMS": "0",
        "primary_recommendations-TOTAL_FORMS": "0", "primary_recommendations-INITIAL_FORMS": "0",
        "stockrecords-TOTAL_FORMS": "1", "stockrecords-INITIAL_FORMS": "0",
        "stockrecords-0-partner": str(shop["partner"].pk), "stockrecords-0-partner_sku": "NH-SHIRT-1",
        "stockrecords-0-price": "19.00", "stockrecords-0-price_currency": "GBP",
        "stockrecords-0-num_in_stock": "5",
    }
    form.update(fields)
    return form


def oscar_product(shop: dict, title: str, images: list[bytes], sku: str, **fields) -> Product:
    """A product made through the ORM as an import would (signals on), with images and stock."""
    from django.core.files.base import ContentFile

    product = Product.objects.create(product_class=fields.pop("product_class", shop["class"]), title=title,
                                     **fields)
    for order, data in enumerate(images):
        image = ProductImage(product=product, display_order=order)
        image.original.save(f"{sku}-{order}.png", ContentFile(data), save=True)
    StockRecord.objects.create(product=product, partner=shop["partner"], partner_sku=sku, price="10.00",
                               num_in_stock=1)
    return product


def embed(*products) -> dict:
    registration = registry.get(Product)
    objects = registration.fetch([p.pk for p in products])
    return embed_objects(registration, objects, register_encoder()).as_dict()
