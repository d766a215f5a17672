"""Test helpers over the demo shop's own catalog loader."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from django.test import override_settings

from shop_demo.catalog.loading import create_catalog, create_product

__all__ = ["create_catalog", "create_product", "embedded_catalog", "encoder_weights_deleted", "imported",
           "signals_off"]


@contextlib.contextmanager
def signals_off() -> Iterator[None]:
    """Products saved meanwhile arrive as an import would: nothing is queued for them."""
    from clip_search.registry import registry
    from clip_search.signals import connect_registration, disconnect_registration
    from shop_demo.catalog.models import Product

    registration = registry.get(Product)
    disconnect_registration(registration)
    try:
        yield
    finally:
        connect_registration(registration)


def imported(specs) -> list:
    """Products created without signals (an import): nothing is queued for them yet."""
    with signals_off():
        return [create_product(spec) for spec in specs]


@contextlib.contextmanager
def embedded_catalog(specs: list, media: Path, django_db_blocker) -> Iterator[list[tuple]]:
    """The drawn products, embedded inline and committed; deleted afterwards.

    The database is unblocked only to create and to delete them, so a test that forgets
    the ``db`` fixture fails instead of committing its own rows (a caller whose live server
    thread queries meanwhile holds ``django_db_blocker.unblock()`` itself).
    """
    from clip_search.indexing import register_encoder
    from clip_search.models import Embedding, EncoderModel
    from clip_search.registry import registry
    from clip_search.reindex import reindex_inline
    from shop_demo.catalog.models import Brand, Category, Product

    with override_settings(MEDIA_ROOT=media):
        with django_db_blocker.unblock():
            products = imported(specs)
            summary = reindex_inline(registry.get(Product), register_encoder(), missing_only=True,
                                     batch_size=64)
            assert not summary.errors, summary.errors
        try:
            yield list(zip(specs, products, strict=True))
        finally:
            with django_db_blocker.unblock():
                Embedding.objects.all().delete()
                EncoderModel.objects.all().delete()
                Product.objects.all().delete()
                Brand.objects.all().delete()
                Category.objects.all().delete()


@contextlib.contextmanager
def encoder_weights_deleted(model_dir: Path, scratch: Path) -> Iterator[None]:
    """The active encoder pointed at a copy of its weights that is then deleted: a real
    missing model, not a mock. Restored afterwards."""
    from clip_search import encoders
    from clip_search.models import EncoderModel

    encoder = EncoderModel.objects.get(is_active=True)
    moved = scratch / "model"
    shutil.copytree(model_dir, moved)
    EncoderModel.objects.filter(pk=encoder.pk).update(name=f"local-dir:{moved}")
    shutil.rmtree(moved)
    encoders.reset()
    try:
        yield
    finally:
        EncoderModel.objects.filter(pk=encoder.pk).update(name=encoder.name)
        encoders.reset()
