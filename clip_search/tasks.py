"""Celery tasks. Idempotent (a duplicate delivery leaves one row), acks late, JSON arguments.

Workers need ``worker_prefetch_multiplier = 1`` and should consume the queue named by
``CLIP_SEARCH["QUEUE"]`` (README: "Running the worker").
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, models
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Cast
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from clip_search.conf import clip_settings
from clip_search.indexing import (
    active_encoder,
    embed_objects,
    iter_objects,
    register_encoder,
    remove_object,
)
from clip_search.models import Embedding, EncoderModel
from clip_search.registry import registry

logger = logging.getLogger(__name__)

# A request must not hang on a dead broker: one quick retry, then report and move on.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             name="clip_search.embed_batch")
def embed_batch(self, label: str, pks: list[str], encoder_id: int | None = None,
                force: bool = False) -> dict:
    """Embed these objects of one registered model. Bad images are rows, not retries."""
    registration = registry.get(label)
    try:
        encoder = _encoder(encoder_id)
        objects = iter_objects(registration, pks)
        gone = set(map(str, pks)) - {str(o.pk) for o in objects}
        for pk in gone:  # deleted since it was queued
            remove_object(registration, pk)
        summary = embed_objects(registration, objects, encoder, force=force)
    except (DatabaseError, OSError, BrokerError) as error:  # transient: back off and retry
        if self.request.retries >= clip_settings.MAX_RETRIES:
            raise
        raise self.retry(exc=error, countdown=min(600, 5 * 2 ** self.request.retries)) from error
    if summary.errors:
        logger.warning("clip_search: %d of %s failed: %s", len(summary.errors), label, summary.errors)
    return summary.as_dict()


def _encoder(encoder_id: int | None) -> EncoderModel:
    if encoder_id is not None:
        return EncoderModel.objects.get(pk=encoder_id)
    return active_encoder() or register_encoder()


def enqueue(label: str, pks: list[str], encoder_id: int | None = None, force: bool = False) -> bool:
    """Queue an embed task. With the broker down, record why on the rows and return False."""
    try:
        embed_batch.apply_async(args=(label, [str(pk) for pk in pks], encoder_id, force),
                                queue=clip_settings.QUEUE, retry=True, retry_policy=PUBLISH_RETRY)
        return True
    except (BrokerError, OSError) as error:
        reason = f"Could not queue the embed task ({type(error).__name__}: {error}); the sweep will retry."
        logger.warning("clip_search: %s [%s %s]", reason, label, pks)
        mark_stale(label, pks, reason, force=force)
        return False


def mark_stale(label: str, pks: list[str], reason: str, force: bool = False) -> None:
    """Leave a trace the sweep finds: absent rows become pending, existing rows stale.

    ``force`` (a re-embed staff asked for) forgets the image digest, so the sweep's plain
    task re-embeds an unchanged image instead of skipping it."""
    encoder = active_encoder()
    if encoder is None:
        return  # nothing embedded yet: the sweep finds objects without rows anyway
    content_type = ContentType.objects.get_for_model(registry.get(label).model, for_concrete_model=False)
    for pk in pks:
        row, created = Embedding.objects.get_or_create(
            content_type=content_type, object_pk=str(pk), encoder=encoder,
            defaults={"status": Embedding.Status.PENDING, "error": reason, "stale": True})
        if not created:
            changes = {"image_sha256": ""} if force else {}
            Embedding.objects.filter(pk=row.pk).update(stale=True, error=reason, **changes)


def find_work(registration, encoder: EncoderModel, *, missing_only: bool = True, after_pk=None):
    """Objects of a registered model that need (re-)embedding for ``encoder``, by pk.

    Missing: no row, a pending or stale row, or an error row below the retry limit.
    """
    model = registration.model
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    queryset = model._default_manager.order_by("pk")
    if after_pk is not None:
        queryset = queryset.filter(pk__gt=after_pk)
    if not missing_only:
        return queryset
    rows = Embedding.objects.filter(content_type=content_type, encoder=encoder,
                                    object_pk=Cast(OuterRef("pk"), models.CharField()))
    needs_work = rows.filter(Q(status=Embedding.Status.PENDING) | Q(stale=True)
                             | Q(status=Embedding.Status.ERROR, attempts__lt=clip_settings.MAX_RETRIES))
    return queryset.filter(~Exists(rows) | Exists(needs_work))


@shared_task(name="clip_search.sweep", acks_late=True)
def sweep(batch_size: int | None = None) -> int:
    """Periodic (Celery beat): queue everything that signals missed — bulk_create, update(),
    saves while the broker was down, retryable errors. Returns how many objects it queued."""
    batch_size = batch_size or clip_settings.BATCH_SIZE
    encoder = active_encoder() or register_encoder()
    queued = 0
    for registration in registry:
        pks = [str(pk) for pk in find_work(registration, encoder).values_list("pk", flat=True)]
        for start in range(0, len(pks), batch_size):
            if enqueue(registration.label, pks[start:start + batch_size], encoder.pk):
                queued += len(pks[start:start + batch_size])
    logger.info("clip_search sweep queued %d objects at %s", queued, timezone.now())
    return queued

