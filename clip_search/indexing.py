"""The embedding pipeline shared by the Celery tasks and ``clip_reindex``.

For a batch of one registered model's objects: read each image through its storage, skip
what is unchanged (same image sha256, same encoder), decode safely, embed in one batch,
moderate, and upsert one row per (object, encoder). Every outcome lands in the row's status
and error, so nothing is silently lost; a bad image is an ``error`` row, never an exception.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.search import SearchVector
from django.core.signals import setting_changed
from django.db import models, transaction
from django.db.models import Value
from django.utils import timezone

from clip_search import sql
from clip_search.conf import clip_settings
from clip_search.encoders import EncoderSpec, get_clip, image_encoder_for, text_encoder_for
from clip_search.imaging import ImageRejected
from clip_search.models import Embedding, EncoderModel, ReviewItem
from clip_search.moderation import Moderator, open_review, supersede_reviews, upload_flagged
from clip_search.registry import Registration

logger = logging.getLogger(__name__)

Status = Embedding.Status


@dataclass
class Summary:
    """What happened to a batch: counts per outcome and the reasons of the failures."""

    counts: Counter = field(default_factory=Counter)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, other: Summary) -> Summary:
        self.counts.update(other.counts)
        self.errors.update(other.errors)
        return self

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "errors": self.errors}

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        return cls(counts=Counter(data.get("counts", {})), errors=dict(data.get("errors", {})))


class Pipeline:
    """A loaded encoder, its moderator and its EncoderModel row: built once per process."""

    def __init__(self, encoder: EncoderModel, spec: EncoderSpec) -> None:
        clip = get_clip(spec, towers="both")
        if clip.fingerprint != encoder.fingerprint:
            raise RuntimeError(
                f"Weights of {spec.model!r} changed since encoder {encoder.pk} was registered.")
        self.encoder = encoder
        self.images = image_encoder_for(clip)
        self.moderator = Moderator(text_encoder_for(clip, cache=False), clip.logit_scale)


_pipelines: dict[int, Pipeline] = {}


def _forget_pipelines(*, setting: str, **kwargs) -> None:
    """Moderation prompts and encoder options are read when a pipeline is built."""
    if setting == "CLIP_SEARCH":
        _pipelines.clear()


setting_changed.connect(_forget_pipelines)


def spec_for(encoder: EncoderModel) -> EncoderSpec:
    return EncoderSpec.from_settings().with_weights(encoder.name, encoder.pretrained)


def register_encoder(spec: EncoderSpec | None = None, activate_if_none: bool = True) -> EncoderModel:
    """The EncoderModel row for ``spec`` (settings by default), creating it and its index.

    The first encoder of a fresh install becomes active; later ones wait for an explicit
    switch (``clip_reindex --model ... --activate``).
    """
    spec = spec or EncoderSpec.from_settings()
    clip = get_clip(spec, towers="both")
    encoder, _ = EncoderModel.objects.get_or_create(
        name=spec.model, pretrained=spec.pretrained, fingerprint=clip.fingerprint,
        defaults={"dimension": clip.dimension},
    )
    sql.ensure_vector_index(encoder.pk, encoder.dimension)
    if activate_if_none and not encoder.is_active:
        with transaction.atomic():
            if not EncoderModel.objects.select_for_update().filter(is_active=True).exists():
                EncoderModel.objects.filter(pk=encoder.pk).update(is_active=True, activated_at=timezone.now())
                encoder.refresh_from_db()
    return encoder


def active_encoder() -> EncoderModel | None:
    return EncoderModel.objects.filter(is_active=True).first()


def pipeline_for(encoder: EncoderModel) -> Pipeline:
    if encoder.pk not in _pipelines:
        _pipelines[encoder.pk] = Pipeline(encoder, spec_for(encoder))
    return _pipelines[encoder.pk]


def source_digest(registration: Registration, obj: models.Model) -> str:
    """Changes when the image (by storage name) or any searchable text changes."""
    parts = [registration.image_name(obj), *(t for _, t in registration.text_parts(obj)),
             registration.keyword_text(obj)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def document_fields(registration: Registration, obj: models.Model) -> dict:
    """The stored full-text document and keyword text of one object."""
    config = clip_settings.SEARCH["TEXT_SEARCH_CONFIG"]
    vectors = [SearchVector(Value(text), weight=weight, config=config)
               for weight, text in registration.text_parts(obj) if text]
    document = vectors[0] if vectors else None
    for vector in vectors[1:]:
        document = document + vector
    keyword_values = [str(v).strip().lower() for v in registration.keyword_values(obj)]
    return {
        "search_document": document,
        "keywords": registration.keyword_text(obj).lower(),
        "keyword_tokens": [v[:200] for v in keyword_values if v],
        "source_digest": source_digest(registration, obj),
    }


def embed_objects(registration: Registration, objects: Sequence[models.Model], encoder: EncoderModel,
                  *, force: bool = False) -> Summary:
    """Embed a batch and write one row per object. Safe to run twice (idempotent)."""
    summary = Summary()
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    existing = {
        row.object_pk: row
        for row in Embedding.objects.filter(content_type=content_type, encoder=encoder,
                                            object_pk__in=[str(o.pk) for o in objects])
    }
    to_encode: list[tuple[models.Model, bytes, str]] = []
    for obj in objects:
        pk = str(obj.pk)
        try:
            data = registration.read_image(obj)
        except OSError as error:  # the file named by the field is gone or unreadable
            _write(content_type, encoder, obj, registration, status=Status.ERROR,
                   error=f"Image file could not be read: {error}", sha="", bump=True)
            summary.counts["failed"] += 1
            summary.errors[pk] = f"image file could not be read: {error}"
            continue
        if data is None:
            _write(content_type, encoder, obj, registration, status=Status.NO_IMAGE, vector=None, sha="")
            summary.counts["no_image"] += 1
            continue
        if not data:  # the field names a file, but the file is empty (an upload cut short)
            reason = _reason(ImageRejected("empty", "The image file is empty."))
            _write(content_type, encoder, obj, registration, status=Status.ERROR, vector=None, sha="",
                   error=reason, bump=True)
            summary.counts["failed"] += 1
            summary.errors[pk] = reason
            continue
        sha = hashlib.sha256(data).hexdigest()
        row = existing.get(pk)
        if (not force and row is not None and row.image_sha256 == sha and row.vector is not None
                and row.status in (Status.INDEXED, Status.FLAGGED, Status.REJECTED)):
            _write(content_type, encoder, obj, registration, status=row.status)  # text may have changed
            summary.counts["skipped"] += 1
            continue
        to_encode.append((obj, data, sha))
    if not to_encode:
        return summary
    pipeline = pipeline_for(encoder)
    results = pipeline.images.encode_bytes([data for _, data, _ in to_encode])
    good = [(item, result) for item, result in zip(to_encode, results, strict=True)
            if result.vector is not None]
    verdicts = pipeline.moderator.judge(_stack([result.vector for _, result in good], encoder.dimension))
    verdict_of = {id(result): verdict for (_, result), verdict in zip(good, verdicts, strict=True)}
    for (obj, _data, sha), result in zip(to_encode, results, strict=True):
        pk = str(obj.pk)
        if result.error is not None:
            _write(content_type, encoder, obj, registration, status=Status.ERROR, vector=None, sha=sha,
                   error=_reason(result.error), bump=True)
            summary.counts["failed"] += 1
            summary.errors[pk] = _reason(result.error)
            continue
        verdict = verdict_of[id(result)]
        status = Status.FLAGGED if verdict.is_flagged else Status.INDEXED
        with transaction.atomic():
            embedding = _write(content_type, encoder, obj, registration, status=status,
                               vector=result.vector.tolist(), sha=sha, scores=verdict.scores, embedded=True)
            if verdict.is_flagged:
                item, created = open_review(embedding, verdict, ReviewItem.Reason.FLAGGED)
                if created:
                    transaction.on_commit(lambda e=embedding, i=item, v=verdict: upload_flagged.send(
                        sender=registration.model, object_pk=e.object_pk, embedding=e, item=i,
                        scores=v.scores))
            elif pipeline.moderator.sampled(sha):
                open_review(embedding, verdict, ReviewItem.Reason.SAMPLED)
            else:
                supersede_reviews(embedding)  # a new, clean image replaces a flagged one
        summary.counts["flagged" if verdict.is_flagged else "indexed"] += 1
    return summary


def _stack(vectors: list, dimension: int):
    import numpy as np

    return np.vstack(vectors) if vectors else np.zeros((0, dimension), dtype=np.float32)


def _reason(error: ImageRejected) -> str:
    return f"{error.code}: {error.message}"


def _write(content_type, encoder, obj, registration, *, status, vector=..., sha=None, error="",
           scores=None, embedded=False, bump=False) -> Embedding:
    """Upsert the (object, encoder) row; ``...`` leaves a field as it is."""
    values = {"status": status, "error": error, "stale": False, "image_name": registration.image_name(obj),
              **document_fields(registration, obj)}
    if vector is not ...:
        values["vector"] = vector
    if sha is not None:
        values["image_sha256"] = sha
    if scores is not None:
        values["moderation_scores"] = scores
    if embedded:
        values["embedded_at"] = timezone.now()
        values["attempts"] = 0
    search_document = values.pop("search_document")
    embedding, _ = Embedding.objects.update_or_create(
        content_type=content_type, object_pk=str(obj.pk), encoder=encoder, defaults=values)
    updates: dict = {"search_document": search_document}
    if bump:
        updates["attempts"] = models.F("attempts") + 1
    Embedding.objects.filter(pk=embedding.pk).update(**updates)
    return embedding


def iter_objects(registration: Registration, pks: Iterable[str]) -> list[models.Model]:
    """The objects for ``pks`` (all objects of the model, not only the storefront's)."""
    manager = registration.model._default_manager
    return list(manager.select_related(*registration.related_paths()).filter(pk__in=list(pks)))


def remove_object(registration: Registration, pk: str) -> int:
    """Delete every encoder's row of a deleted product."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    deleted, _ = Embedding.objects.filter(content_type=content_type, object_pk=str(pk)).delete()
    return deleted
