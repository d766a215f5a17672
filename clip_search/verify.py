"""Is the index still true to the shop's tables? The check behind every "never silently stale".

``compare`` recomputes what each object's row was built from (``Registration.source_digest``:
its searchable text and its images' storage names, in display order) and says how it
drifted. The save handler calls it for the objects a save touched; the verify pass calls it
for the whole catalog in pk-keyed batches, and so finds what no signal reported:
``QuerySet.update()``, raw SQL, fixtures, a lost broker message, an image row deleted behind
the ORM's back, a file overwritten under the same name (its size changed).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import CharField, Q
from django.db.models.functions import Cast

from clip_search import rows
from clip_search.conf import clip_settings
from clip_search.models import Embedding, EncoderModel, ImageEmbedding, VerifyCursor
from clip_search.registry import Registration

Status = Embedding.Status


@dataclass
class Drift:
    """How one object differs from its row; falsy when it does not."""

    missing: bool = False  # no row for the encoder
    sources: bool = False  # text, keywords or the list of images changed
    new_images: bool = False  # an image the row has not scored (a new name, or a new size)
    unfinished: bool = False  # pending, stale, or failed below the retry limit

    def __bool__(self) -> bool:
        return self.missing or self.sources or self.new_images or self.unfinished


def compare(registration: Registration, objects: Sequence[models.Model], encoder: EncoderModel | None = None,
            *, sizes: bool = False, unfinished: bool = True) -> dict[Any, Drift]:
    """Each object's drift from its row for ``encoder`` (the active one by default).

    ``sizes`` also asks the storage for each image's size (a stat; a HEAD on object storage):
    the verify pass does, the save handler does not. With ``unfinished=False`` unfinished rows
    are not reported at all (the sweep queues them apart, once they are old enough).
    """
    from clip_search.indexing import active_encoder

    encoder = encoder or active_encoder()
    if encoder is None:
        return {obj.pk: Drift(missing=True) for obj in objects}
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    keys = [str(obj.pk) for obj in objects]
    rows = {row.object_pk: row for row in Embedding.objects.filter(
        content_type=content_type, encoder=encoder, object_pk__in=keys)}
    scored: dict[str, dict[str, int | None]] = {}
    for object_pk, name, size in ImageEmbedding.objects.filter(
            embedding__in=[row.pk for row in rows.values()]).values_list("object_pk", "name", "size"):
        scored.setdefault(object_pk, {})[name] = size
    drift = {}
    for obj in objects:
        row = rows.get(str(obj.pk))
        if row is None:
            drift[obj.pk] = Drift(missing=True)
            continue
        images = registration.source_images(obj)
        known = scored.get(row.object_pk, {})
        new_images = any(image.identity not in known for image in images)
        if sizes and not new_images:
            new_images = any(known[image.identity] is not None and _size(image) != known[image.identity]
                             for image in images)
        drift[obj.pk] = Drift(
            sources=row.source_digest != registration.source_digest(obj, images),
            new_images=new_images, unfinished=unfinished and _unfinished(row))
    return drift


def _size(image) -> int | None:
    try:
        return image.size()
    except (OSError, NotImplementedError):  # gone: the worker records why
        return None


def _unfinished(row: Embedding) -> bool:
    """``needs_work()``, for a row already read."""
    return (row.stale or row.reembed or row.status == Status.PENDING
            or (row.status == Status.ERROR and row.attempts < clip_settings.MAX_RETRIES))


@dataclass
class VerifiedBatch:
    last_pk: Any
    checked: int
    drifted: list[Any]
    unscored: list[Any]  # of ``drifted``: a new image to hide until scored


def verify_batches(registration: Registration, encoder: EncoderModel, *, after_pk: Any = None,
                   limit: int | None = None, batch_size: int | None = None,
                   unfinished: bool = True) -> Iterator[VerifiedBatch]:
    """The catalog in pk order (``pk > after_pk``, never OFFSET), ``batch_size`` objects at a
    time, each batch compared with its rows, sizes included; stops after ``limit`` objects."""
    batch_size = batch_size or clip_settings.BATCH_SIZE
    seen = 0
    while limit is None or seen < limit:
        queryset = registration.model._default_manager.order_by("pk")
        if after_pk is not None:
            queryset = queryset.filter(pk__gt=after_pk)
        size = min(batch_size, limit - seen) if limit else batch_size
        pks = list(queryset.values_list("pk", flat=True)[:size])
        if not pks:
            return
        objects = sorted(registration.fetch(pks), key=lambda obj: pks.index(obj.pk))
        drift = compare(registration, objects, encoder, sizes=True, unfinished=unfinished)
        after_pk, seen = pks[-1], seen + len(pks)
        yield VerifiedBatch(last_pk=after_pk, checked=len(pks),
                            drifted=[pk for pk in pks if drift.get(pk, Drift(missing=True))],
                            unscored=[pk for pk in pks if pk in drift and drift[pk].new_images])


def hide_unscored(registration: Registration, batch: VerifiedBatch) -> int:
    """Found late is still found: objects with an image the index has not scored leave the
    storefront now, before their task is queued."""
    if not batch.unscored:
        return 0
    return rows.retrying(lambda: rows.hide_until_scored(registration.model, batch.unscored))


def delete_orphans(registration: Registration) -> int:
    """Rows (every encoder's) of objects that no longer exist: deleted by raw SQL, or while
    the delete signal's work was lost."""
    model = registration.model
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    existing = model._default_manager.annotate(clip_key=Cast("pk", CharField())).values("clip_key")
    _, deleted = Embedding.objects.filter(content_type=content_type).exclude(object_pk__in=existing).delete()
    return deleted.get(Embedding._meta.label, 0)


def resume_point(registration: Registration, encoder: EncoderModel) -> tuple[VerifyCursor, Any]:
    """The sweep's cursor for this model and encoder and the pk to resume after (None: start)."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    cursor, _ = VerifyCursor.objects.get_or_create(content_type=content_type, encoder=encoder)
    after = registration.model._meta.pk.to_python(cursor.last_pk) if cursor.last_pk else None
    return cursor, after


def needs_work() -> Q:
    """Rows the sweep and ``--missing`` redo without comparing: pending, stale, re-embed
    asked, or failed below the retry limit."""
    return (Q(status=Status.PENDING) | Q(stale=True) | Q(reembed=True)
            | Q(status=Status.ERROR, attempts__lt=clip_settings.MAX_RETRIES))
