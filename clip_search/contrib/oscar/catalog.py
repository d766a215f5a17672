"""How clip_search reads Oscar's ``catalogue.Product``.

- **Images**: the product's ``ProductImage`` rows in display order; a variant without pictures
  of its own has its parent's (Oscar's ``get_all_images``), so it is embedded and moderated
  with what its page shows.
- **Text**: the title (a variant's falls back to its parent's), the attribute values (a
  variant's include its parent's), the description, the category names.
- **Keywords**: the UPC, the partner SKUs of its stock records, brand-like attributes
  (``CLIP_SEARCH_OSCAR["KEYWORD_ATTRIBUTES"]``); a parent also carries its variants' UPCs and
  SKUs, so a variant's SKU finds the listing that sells it.
- **Storefront**: ``Product.objects.browsable()``, what Oscar lists: standalone products and
  parents, public. Every product is indexed and moderated, variants included (a public variant
  has a page of its own), but search returns what Oscar's own search returns.
- **Watchers**: saving or deleting an image, a stock record, an attribute value, a product
  category or a variant re-embeds the products it feeds. Oscar writes attribute values in bulk
  (no signals) right after the product's own save: a product save is therefore always queued,
  and the worker, which runs after the commit (use ``ATOMIC_REQUESTS``, as Oscar recommends),
  reads them; the verify pass catches anything written without a save.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.db import models
from django.utils.html import strip_tags

import clip_search
from clip_search.contrib.oscar.conf import oscar_options
from clip_search.registry import Registration, registry

LABEL = "catalogue.product"


def product_images(product: models.Model) -> list:
    """The picture files Oscar shows for the product, in display order."""
    images = list(product.images.all())
    if not images and product.parent_id:
        images = list(product.parent.images.all())
    return [image.original for image in images]


def title(product: models.Model) -> str:
    return product.get_title()


def attribute_text(product: models.Model) -> list[str]:
    """The words of its attribute values ("red", "cotton"), identifiers left to the keywords."""
    options = oscar_options()
    kinds, identifiers = set(options["TEXT_ATTRIBUTE_TYPES"]), set(options["KEYWORD_ATTRIBUTES"])
    return [strip_tags(value.value_as_text) for value in _attribute_values(product)
            if value.attribute.type in kinds and value.attribute.code not in identifiers]


def category_names(product: models.Model) -> list[str]:
    return [category.name for category in product.get_categories()]


def keywords(product: models.Model) -> list[str]:
    """UPC, partner SKUs and brand-like attributes; a parent's include its variants'."""
    identifiers = set(oscar_options()["KEYWORD_ATTRIBUTES"])
    values = [*_identifiers(product)]
    for child in (product.children.all() if product.is_parent else ()):
        values.extend(_identifiers(child))
    values.extend(value.value_as_text for value in _attribute_values(product)
                  if value.attribute.code in identifiers)
    return list(dict.fromkeys(v for v in values if v))


def _identifiers(product: models.Model) -> Iterable[str]:
    yield product.upc or ""
    for stockrecord in product.stockrecords.all():
        yield stockrecord.partner_sku


def _attribute_values(product: models.Model) -> list:
    values = product.get_attribute_values()  # a variant's include its parent's
    return list(values.select_related("attribute") if isinstance(values, models.QuerySet) else values)


def with_variants(product: models.Model | None) -> list[Any]:
    """A product and its variants: what a change to it (its pictures, attributes) can alter."""
    if product is None:
        return []
    return [product.pk, *product.children.values_list("pk", flat=True)]


def _product_and_parent(row: models.Model) -> list[Any]:
    return [row.product_id, row.product.parent_id] if row.product_id else []


def register_product(**overrides: Any) -> Registration | None:
    """Register ``catalogue.Product`` as described above; ``overrides`` replace any argument of
    ``clip_search.register`` (``text=``, ``keywords=``, ``queryset=`` …). Does nothing when the
    model is registered already (a shop's own registration wins)."""
    if any(registration.label == LABEL for registration in registry):
        return None
    Product = apps.get_model("catalogue", "Product")
    options: dict[str, Any] = dict(
        images=product_images,
        text=[title, attribute_text, "description", category_names],
        keywords=[keywords],
        # Search-as-you-type: titles and category names (both already text sources, so the
        # rows' digests are unchanged).
        suggest={"title": title, "category": category_names},
        queryset=lambda: Product.objects.browsable(),
        related={
            "catalogue.ProductImage": lambda image: with_variants(_related_product(image)),
            "catalogue.ProductAttributeValue": lambda value: with_variants(_related_product(value)),
            "catalogue.ProductCategory": "product",
            "partner.StockRecord": _product_and_parent,
            "catalogue.Product": "parent",  # a variant's SKUs are its parent's keywords
        },
        prefetch=["images", "stockrecords", "categories", "children__stockrecords", "parent__images"],
    )
    options.update(overrides)
    return clip_search.register(Product, **options)


def _related_product(row: models.Model) -> models.Model | None:
    try:
        return row.product
    except models.ObjectDoesNotExist:  # deleted with its product
        return None
