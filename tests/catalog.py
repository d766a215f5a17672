"""Test helpers over the demo shop's own catalog loader."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from django.core.files.base import ContentFile
from django.test import override_settings

from shop_demo.catalog.loading import create_catalog, create_product

__all__ = ["create_catalog", "create_product", "embedded_catalog", "encoder_weights_deleted", "imported",
           "add_image", "quarantine", "set_status", "signals_off", "vector_of"]


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
def embedded_catalog(specs: list, media: Path, django_db_blocker, *, calibrate: bool = False
                     ) -> Iterator[list[tuple]]:
    """The drawn products, embedded inline and committed, their lexicon built (and the encoder
    calibrated, when asked, as clip_reindex does); deleted afterwards.

    The database is unblocked only to create and to delete them, so a test that forgets
    the ``db`` fixture fails instead of committing its own rows (a caller whose live server
    thread queries meanwhile holds ``django_db_blocker.unblock()`` itself).
    """
    from clip_search.bulk import finish, reindex_inline
    from clip_search.indexing import register_encoder
    from clip_search.models import Embedding, EncoderModel, Lexicon, Suggestion, Term
    from clip_search.registry import registry
    from shop_demo.catalog.models import Brand, Category, Product

    with override_settings(MEDIA_ROOT=media):
        with django_db_blocker.unblock():
            products = imported(specs)
            encoder = register_encoder()
            summary = reindex_inline(registry.get(Product), encoder, missing_only=True, batch_size=64)
            assert not summary.errors, summary.errors
            finish([registry.get(Product)], encoder, calibrate=calibrate)
        try:
            yield list(zip(specs, products, strict=True))
        finally:
            with django_db_blocker.unblock():
                for model in (Lexicon, Term, Suggestion, Embedding):
                    model.objects.all().delete()
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


def set_status(product, status: str) -> None:
    """Give a product's rows a status directly (and its image rows their copy of it)."""
    from clip_search import rows
    from clip_search.models import Embedding

    for pk in Embedding.objects.filter(object_pk=str(product.pk)).values_list("pk", flat=True):
        rows.set_status(pk, status)


def quarantine(row, scores: dict | None = None):
    """Flag the row's first image as moderation would and open its review item; returns it."""
    from clip_search import moderation, rows
    from clip_search.models import Embedding, ImageEmbedding, ReviewItem

    scores = scores or {"weapons": 0.9}
    image = row.images.order_by("position").first()
    ImageEmbedding.objects.filter(pk=image.pk).update(verdict=ImageEmbedding.Verdict.FLAGGED,
                                                      moderation_scores=scores)
    rows.set_status(row.pk, Embedding.Status.FLAGGED)
    image.refresh_from_db()
    verdict = moderation.Verdict(scores=scores, flagged=sorted(scores))
    return moderation.open_review(image, verdict, ReviewItem.Reason.FLAGGED)[0]


def vector_of(product, position: int = 0):
    """The product's stored vector of one image (active encoder), as a numpy array."""
    import numpy as np

    from clip_search.models import ImageEmbedding

    value = ImageEmbedding.objects.get(object_pk=str(product.pk), encoder__is_active=True,
                                       position=position).vector
    return None if value is None else np.asarray(value, dtype=np.float32)


def add_image(product, data: bytes, order: int = 0, name: str = "gallery.png"):
    """A gallery row (``catalog.ProductImage``) with this picture, saved like the admin does."""
    from shop_demo.catalog.models import ProductImage

    row = ProductImage(product=product, display_order=order)
    row.image.save(name, ContentFile(data), save=False)
    row.save()
    return row
