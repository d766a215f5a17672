"""Celery tasks. Idempotent (a duplicate delivery leaves one row), acks late, JSON arguments.

Every clip_search task publishes to ``CLIP_SEARCH["QUEUE"]`` by itself (``ClipSearchTask``):
``delay()``, ``apply_async()``, a beat entry naming ``"clip_search.sweep"`` and
``app.send_task`` all land where the documented worker (``-Q clip_search``) listens,
without a route in the shop's Celery settings. Workers need ``worker_prefetch_multiplier = 1``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Task, shared_task
from celery.app.task import extract_exec_options
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, models
from django.db.models import Exists, OuterRef
from django.db.models.functions import Cast
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from clip_search import calibration, lexicon, searchlog
from clip_search.conf import clip_settings
from clip_search.indexing import active_encoder, embed_objects, register_encoder, remove_object
from clip_search.models import Embedding, EncoderModel
from clip_search.registry import Registration, registry
from clip_search.routers import primary_reads
from clip_search.tagging.signals import after_embed
from clip_search.verify import delete_orphans, hide_unscored, needs_work, resume_point, verify_batches

logger = logging.getLogger(__name__)

# A request must not hang on a dead broker: one quick retry, then report and move on.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


class ClipSearchTask(Task):
    """Publishes to ``CLIP_SEARCH["QUEUE"]``, read at publish time (``override_settings`` works)."""

    @property
    def queue(self) -> str:  # type: ignore[override]
        return clip_settings.QUEUE

    def _get_exec_options(self) -> dict[str, Any]:
        # Celery caches these per task; the queue is a setting, so they are read every time.
        return extract_exec_options(self)


@shared_task(bind=True, base=ClipSearchTask, acks_late=True, reject_on_worker_lost=True, max_retries=None,
             name="clip_search.embed_batch")
@primary_reads()
def embed_batch(self, label: str, pks: list[str], encoder_id: int | None = None,
                force: bool = False) -> dict:
    """Embed these objects of one registered model. Bad images are rows, not retries."""
    registration = registry.get(label)
    try:
        encoder = _encoder(encoder_id)
        objects = registration.fetch(pks)
        gone = set(map(str, pks)) - {str(o.pk) for o in objects}
        for pk in gone:  # deleted since it was queued
            remove_object(registration, pk)
        summary = embed_objects(registration, objects, encoder, force=force)
        after_embed(registration, [obj.pk for obj in objects], encoder)  # TAGGING["AFTER_EMBED"]
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


def enqueue(label: str, pks: list[Any], encoder_id: int | None = None, force: bool = False) -> bool:
    """Queue embed tasks, ``BATCH_SIZE`` objects each. With the broker down, record why on the
    rows (the sweep finds them) and return False."""
    keys = [str(pk) for pk in pks]
    size = clip_settings.BATCH_SIZE
    for start in range(0, len(keys), size):
        batch = keys[start:start + size]
        try:
            embed_batch.apply_async(args=(label, batch, encoder_id, force), retry=True,
                                    retry_policy=PUBLISH_RETRY)
        except (BrokerError, OSError) as error:
            reason = (f"Could not queue the embed task ({type(error).__name__}: {error}); "
                      "the sweep will retry.")
            logger.warning("clip_search: %s [%s, %d objects]", reason, label, len(keys) - start)
            mark_stale(label, keys[start:], reason, force=force)
            return False
    return True


def mark_stale(label: str, pks: list[str], reason: str, force: bool = False) -> None:
    """Leave a trace the sweep finds: absent rows become pending, existing rows stale.

    ``force`` (a re-embed staff asked for) is kept on the row, so the sweep's task re-embeds
    the unchanged images instead of reusing their vectors."""
    encoder = active_encoder()
    if encoder is None:
        return  # nothing embedded yet: the sweep finds objects without rows anyway
    content_type = ContentType.objects.get_for_model(registry.get(label).model, for_concrete_model=False)
    for pk in pks:
        row, created = Embedding.objects.get_or_create(
            content_type=content_type, object_pk=str(pk), encoder=encoder,
            defaults={"status": Embedding.Status.PENDING, "error": reason, "stale": True})
        if not created:
            Embedding.objects.filter(pk=row.pk).update(stale=True, error=reason, reembed=force or row.reembed)


def find_work(registration: Registration, encoder: EncoderModel, *, missing_only: bool = True,
              after_pk: Any = None) -> models.QuerySet:
    """Objects of a registered model that need (re-)embedding for ``encoder``, by pk.

    Missing: no row, or a row that is pending, stale, asked to re-embed, or failed below the
    retry limit. What changed without a signal is the verify pass's to find.
    """
    model = registration.model
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    queryset = model._default_manager.order_by("pk")
    if after_pk is not None:
        queryset = queryset.filter(pk__gt=after_pk)
    if not missing_only:
        return queryset
    row = Embedding.objects.filter(content_type=content_type, encoder=encoder,
                                   object_pk=Cast(OuterRef("pk"), models.CharField()))
    return queryset.filter(~Exists(row) | Exists(row.filter(needs_work())))


@shared_task(name="clip_search.sweep", base=ClipSearchTask, acks_late=True)
@primary_reads()
def sweep(batch_size: int | None = None) -> int:
    """Periodic (Celery beat): queue what signals missed, returns how many objects it queued.

    Every run queues unfinished rows (pending for ``SWEEP["PENDING_AFTER"]`` seconds: its
    message is presumed lost; stale; failed below the retry limit) and objects without a row,
    then verifies the next ``SWEEP["VERIFY_PER_RUN"]`` objects of the catalog against their
    rows (``verify``), resuming where the previous run stopped; a pass that reaches the end
    also deletes the rows of objects that no longer exist. Then it rebuilds each model's
    vocabulary and suggestions if the index changed (``lexicon``), and measures the encoder's
    relevance floor again if the catalog grew or shrank by a quarter (``calibration``), and
    purges the search log of what is older than ``SEARCH_LOG["RETENTION_DAYS"]``.
    """
    options = clip_settings.SWEEP
    encoder = active_encoder() or register_encoder()
    pending_after = timedelta(seconds=options["PENDING_AFTER"])
    queued = 0
    for registration in registry:
        unfinished = _sweep_unfinished(registration, encoder, pending_after)
        queued += len(unfinished) + verify_slice(registration, encoder, limit=options["VERIFY_PER_RUN"],
                                                 batch_size=batch_size, queued=set(unfinished))
        lexicon.refresh_if_stale(registration, encoder)
    calibration.calibrate_if_stale(encoder)
    searchlog.purge()
    logger.info("clip_search sweep queued %d objects", queued)
    return queued


def _sweep_unfinished(registration: Registration, encoder: EncoderModel,
                      pending_after: timedelta) -> list[str]:
    """Queue the rows left unfinished; returns their pks (as the rows store them)."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    rows_ = Embedding.objects.filter(content_type=content_type, encoder=encoder).filter(needs_work())
    rows_ = rows_.exclude(status=Embedding.Status.PENDING, stale=False, reembed=False,
                          updated_at__gt=timezone.now() - pending_after)
    pks = list(rows_.values_list("object_pk", flat=True))
    return pks if pks and enqueue(registration.label, pks, encoder.pk) else []


def verify_slice(registration: Registration, encoder: EncoderModel, *, limit: int | None,
                 batch_size: int | None = None, queued: set[str] = frozenset()) -> int:
    """Verify up to ``limit`` objects after the stored cursor (all of them with None), hide
    those with a new image, queue those that drifted and are not in ``queued`` already;
    returns how many it queued."""
    cursor, after = resume_point(registration, encoder)
    count = checked = 0
    # Unfinished rows are the first step's (``_sweep_unfinished``): not queued twice.
    for batch in verify_batches(registration, encoder, after_pk=after, limit=limit, batch_size=batch_size,
                                unfinished=False):
        hide_unscored(registration, batch)
        drifted = [pk for pk in batch.drifted if str(pk) not in queued]
        if drifted and enqueue(registration.label, drifted, encoder.pk):
            count += len(drifted)
        checked += batch.checked
        cursor.last_pk = str(batch.last_pk)
        cursor.save(update_fields=["last_pk", "updated_at"])
    if limit is None or checked < limit:  # reached the end: the next run starts a new pass
        cursor.last_pk, cursor.passes = "", cursor.passes + 1
        cursor.save(update_fields=["last_pk", "passes", "updated_at"])
        orphans = delete_orphans(registration)
        if orphans:
            logger.info("clip_search: deleted the rows of %d deleted %s objects", orphans, registration.label)
    return count


@primary_reads()
def reindex(target: models.Model | models.QuerySet | list, *, force: bool = False) -> int:
    """Queue (re-)embedding of an object, a queryset or a list of objects of registered
    models, after the current transaction commits; returns how many objects were queued.

    ``force`` re-embeds images that did not change (after new weights, say); otherwise
    unchanged images are reused and only what differs is redone. A dead broker marks the
    rows stale for the sweep, as a save would.
    """
    from django.db import transaction

    if isinstance(target, models.Model):
        groups = {type(target): [target.pk]}
    elif isinstance(target, models.QuerySet):
        groups = {target.model: list(target.order_by().values_list("pk", flat=True))}
    else:
        groups: dict[type[models.Model], list[Any]] = {}
        for obj in target:
            groups.setdefault(type(obj), []).append(obj.pk)
    total = 0
    for model, pks in groups.items():
        label = registry.get(model).label  # RegistrationError for a model that is not registered
        keys = [str(pk) for pk in pks]
        transaction.on_commit(lambda label=label, keys=keys: enqueue(label, keys, force=force))
        total += len(keys)
    return total
