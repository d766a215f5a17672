"""Test helpers over the demo shop's own catalog loader."""

from shop_demo.catalog.loading import create_catalog, create_product

__all__ = ["create_catalog", "create_product"]
