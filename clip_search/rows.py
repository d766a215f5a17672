"""The rules every write to clip_search's rows keeps, in one place.

- **One lock order.** Whatever changes a product's image rows or review items first locks the
  product's ``Embedding`` row (``lock``), then touches images and review items. The worker,
  staff decisions and the save-time hide all follow it, so they queue behind each other
  instead of deadlocking.
- **One status, two places.** A product's status lives on its ``Embedding`` row and, copied,
  on its image rows (the vector leg reads only those); ``set_status`` writes both.
- **Quarantine is per product.** ``derive_status`` turns the images' verdicts into the
  product's status: any image not cleared keeps the whole product out of the storefront.
- **Conflicts are retried.** A deadlock or serialisation failure PostgreSQL reports (with a
  shop's own transactions there is always a chance) reruns the transaction (``retrying``).
- **A write transaction reads the primary.** Inside ``retrying`` every read goes where the
  writes go (``clip_search.routers``), never to a read replica that cannot see the open
  transaction.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.contrib.contenttypes.models import ContentType
from django.db import OperationalError, models, transaction

from clip_search.models import Embedding, ImageEmbedding
from clip_search.routers import primary_reads

logger = logging.getLogger(__name__)

Status = Embedding.Status
Verdict = ImageEmbedding.Verdict
T = TypeVar("T")

# PostgreSQL: deadlock_detected, serialization_failure, lock_not_available.
RETRYABLE_SQLSTATES = {"40P01", "40001", "55P03"}


def derive_status(verdicts: Sequence[str]) -> str:
    """The product's status from its images' verdicts: the worst one wins."""
    if not verdicts:
        return Status.NO_IMAGE
    for verdict, status in ((Verdict.ERROR, Status.ERROR), (Verdict.REJECTED, Status.REJECTED),
                            (Verdict.FLAGGED, Status.FLAGGED)):
        if verdict in verdicts:
            return status
    return Status.INDEXED


def set_status(embedding_id: int, status: str, **fields: Any) -> None:
    """The product row's status (and ``fields``) and its copy on every image row, together."""
    Embedding.objects.filter(pk=embedding_id).update(status=status, **fields)
    ImageEmbedding.objects.filter(embedding_id=embedding_id).exclude(product_status=status).update(
        product_status=status)


def hide_until_scored(model: type[models.Model], pks: Iterable[Any]) -> int:
    """Take these objects out of every storefront leg (all encoders) until the worker has
    scored their images again. Runs inside the caller's transaction: the shop's own save,
    so the new picture and the hide commit together or not at all."""
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    keys = [str(pk) for pk in pks]
    # Product rows first (the lock order), then their images' copies of the status.
    hidden = (Embedding.objects.filter(content_type=content_type, object_pk__in=keys)
              .exclude(status=Status.PENDING).update(status=Status.PENDING))
    ImageEmbedding.objects.filter(content_type=content_type, object_pk__in=keys).exclude(
        product_status=Status.PENDING).update(product_status=Status.PENDING)
    return hidden


def lock(embedding_id: int) -> Embedding:
    """``SELECT … FOR UPDATE`` of the product row: the first lock of every write to a product."""
    return Embedding.objects.select_for_update().get(pk=embedding_id)


def lock_many(embeddings: models.QuerySet) -> list[Embedding]:
    """``lock`` for a batch: the product rows locked in primary-key order (two batches never
    wait on each other in a cycle), with their image rows."""
    return list(embeddings.select_for_update().order_by("pk").prefetch_related("images"))


def is_retryable(error: BaseException) -> bool:
    cause = error.__cause__ or error
    return getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES or getattr(
        cause, "pgcode", None) in RETRYABLE_SQLSTATES


def retrying(function: Callable[[], T], *, attempts: int = 4, using: str | None = None) -> T:
    """Run ``function`` in a transaction; rerun it when PostgreSQL aborts it for a deadlock or
    a serialisation failure. Outside any atomic block only: inside one, the outer
    transaction is already aborted and only its owner can retry."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic(using=using), primary_reads():
                return function()
        except OperationalError as error:
            nested = transaction.get_connection(using).in_atomic_block
            if attempt == attempts or not is_retryable(error) or nested:
                raise
            logger.info("clip_search: transaction conflict (%s), retry %d", error, attempt)
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")
