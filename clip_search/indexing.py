"""The embedding pipeline shared by the Celery tasks and ``clip_reindex``.

Three steps, so that no slow step holds a lock and no stale result is ever written:

1. ``plan``: each object's images in display order, its text document and its source digest.
   An image whose identity (storage name, and size when known) matches a scored image row
   reuses that row's vector and verdict without being read; any other image is read and
   hashed, and one whose sha256 is already scored (a reorder, a rename) is reused too. What
   is left is new pixels.
2. ``embed``: one model call over the batch's new images, then moderation of each.
3. ``write_many``: the batch in one short transaction under its product rows' locks
   (``rows.lock_many``), in a fixed number of statements: each object's sources are read
   again and its result is dropped if they changed since step 1 (a newer task does the work;
   it is requeued in case no save signalled the change). Then the image rows, the product
   status derived from their verdicts, and the review items, in one commit. A staff decision
   stays with its image: re-embedding an unchanged image (same sha256) keeps "approved" or
   "rejected".

Every outcome lands in a row (status and error), so nothing is silently lost; a bad image
is an image row with verdict ``error``, never an exception.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.search import SearchVector
from django.core.signals import setting_changed
from django.db import models, transaction
from django.db.models import Value
from django.utils import timezone

from clip_search import lexicon, rows, sql, tagging
from clip_search.conf import clip_settings
from clip_search.encoders import EncoderSpec, get_clip, image_encoder_for, text_encoder_for
from clip_search.imaging import ImageRejected
from clip_search.models import Embedding, EncoderModel, ImageEmbedding, ReviewItem, object_id
from clip_search.moderation import Moderator, Verdict, open_review, supersede_reviews, upload_flagged
from clip_search.registry import Registration, SourceImage
from clip_search.sql import writes

logger = logging.getLogger(__name__)

Status = Embedding.Status
ImageVerdict = ImageEmbedding.Verdict
STAFF_DECISIONS = (ImageVerdict.APPROVED, ImageVerdict.REJECTED)


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
    encoder = _encoder_row(spec, clip.fingerprint, clip.dimension)
    sql.ensure_vector_index(encoder.pk, encoder.dimension)
    if activate_if_none and not encoder.is_active:
        with transaction.atomic():
            if not EncoderModel.objects.select_for_update().filter(is_active=True).exists():
                EncoderModel.objects.filter(pk=encoder.pk).update(is_active=True, activated_at=timezone.now())
                encoder.refresh_from_db()
    return encoder


def _encoder_row(spec: EncoderSpec, fingerprint: str, dimension: int) -> EncoderModel:
    """The row of these weights, created if none: same name and fingerprint, and the same
    ``pretrained`` unless the model carries its own weights.

    Rows of a ``local-dir:`` or ``hf-hub:`` model written before PRETRAINED stopped applying to
    them hold the settings' tag (``laion2b_s34b_b79k`` by default), which never loaded: they are
    these very weights, so an upgraded shop keeps its row (and its vectors) instead of getting a
    second one for the same weights. What they store is left as it is; labels ignore it.
    """
    if spec.uses_schema:
        found = EncoderModel.objects.filter(name=spec.model, fingerprint=fingerprint).order_by(
            "-is_active", "pk").first()
        if found is not None:
            return found
    encoder, _ = EncoderModel.objects.get_or_create(
        name=spec.model, pretrained=spec.pretrained, fingerprint=fingerprint,
        defaults={"dimension": dimension},
    )
    return encoder


def active_encoder() -> EncoderModel | None:
    return EncoderModel.objects.filter(is_active=True).first()


def pipeline_for(encoder: EncoderModel) -> Pipeline:
    if encoder.pk not in _pipelines:
        _pipelines[encoder.pk] = Pipeline(encoder, spec_for(encoder))
    return _pipelines[encoder.pk]


@dataclass
class Document:
    """What an object is searched by, as its row stores it (``document_fields``: as ORM values)."""

    parts: list[tuple[str, str]]  # (weight, text) of the full-text document, in order; no empty text
    keywords: str
    keyword_tokens: list[str]
    words: str  # every word the vocabulary takes from it: its text and keyword values
    suggestions: Any


def document(registration: Registration, obj: models.Model,
             tag_parts: list[tuple[str, str]] | None = None) -> Document:
    """The object's document (``tag_parts``: its accepted tags' part, when the caller read a
    batch's at once)."""
    if tag_parts is None:
        tag_parts = tagging.document_parts(registration, obj)
    parts = [(weight, text) for weight, text in registration.text_parts(obj) + tag_parts if text]
    # Read once: a callable source may query the database (Oscar's stock records, attributes).
    values = registration.keyword_values(obj)
    keyword_values = [str(v).strip().lower() for v in values]
    return Document(parts=parts, keywords=" ".join(values).lower(),  # Registration.keyword_text
                    keyword_tokens=[v[:200] for v in keyword_values if v], words=_joined(parts, values),
                    suggestions=registration.suggestion_values(obj))


def document_fields(registration: Registration, obj: models.Model) -> dict:
    """The stored full-text document, keyword text, words and suggestions of one object."""
    found = document(registration, obj)
    config = clip_settings.SEARCH["TEXT_SEARCH_CONFIG"]
    vectors = [SearchVector(Value(text), weight=weight, config=config) for weight, text in found.parts]
    search_document = vectors[0] if vectors else None
    for vector in vectors[1:]:
        search_document = search_document + vector
    return {"search_document": search_document, "keywords": found.keywords,
            "keyword_tokens": found.keyword_tokens, "words": lexicon.words_expression(found.words),
            "suggestions": found.suggestions}


def document_text(registration: Registration, obj: models.Model) -> str:
    """Every word the object is searched by: its text and keyword values (the vocabulary's)."""
    return _joined(registration.text_parts(obj), registration.keyword_values(obj))


def _joined(parts: list[tuple[str, str]], keyword_values: list[str]) -> str:
    return " ".join([*(text for _, text in parts if text), *keyword_values])


# --------------------------------------------------------------------------- 1. plan


@dataclass
class PlannedImage:
    """One image of an object: reused from a scored row, to embed, or failed."""

    position: int
    identity: str  # the storage name, or sha256:… for bytes
    size: int | None = None
    sha256: str = ""
    data: bytes | None = None  # new pixels, until step 2 embeds them
    reused: ImageEmbedding | None = None
    vector: np.ndarray | list | None = None
    verdict: str = ""
    scores: dict = field(default_factory=dict)
    error: str = ""
    sampled: bool = False  # a passed image sent to the review queue for quality control


@dataclass
class Plan:
    obj: models.Model
    digest: str
    images: list[PlannedImage]
    row: Embedding | None  # the stored row when planned (None: none yet)
    force: bool

    @property
    def pk(self) -> str:
        return str(self.obj.pk)

    @property
    def unchanged(self) -> bool:
        """Nothing to write: same sources, every image reused, the row finished."""
        row = self.row
        return (row is not None and not self.force and row.source_digest == self.digest
                and not row.stale and not row.reembed and row.status not in (Status.PENDING, Status.ERROR)
                and all(image.reused is not None for image in self.images)
                and len(self.images) == len(row.images.all()))


def plan(registration: Registration, objects: Sequence[models.Model], encoder: EncoderModel,
         *, force: bool = False) -> list[Plan]:
    """Step 1 (module docstring). Reads only files it has not scored before."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    stored = {row.object_pk: row for row in Embedding.objects.filter(
        content_type=content_type, encoder=encoder, object_pk__in=[str(o.pk) for o in objects],
    ).prefetch_related("images")}
    cap = clip_settings.MAX_IMAGES
    plans = []
    for obj in objects:
        row = stored.get(str(obj.pk))
        forced = force or bool(row and row.reembed)
        scored = [image for image in (row.images.all() if row else []) if image.verdict != ImageVerdict.ERROR]
        sources = registration.source_images(obj)
        images = [_plan_image(position, source, scored, searchable=position < cap, force=forced)
                  for position, source in enumerate(sources)]
        plans.append(Plan(obj=obj, digest=registration.source_digest(obj, sources), images=images,
                          row=row, force=forced))
    return plans


def _plan_image(position: int, source: SourceImage, scored: list[ImageEmbedding], *, searchable: bool,
                force: bool) -> PlannedImage:
    image = PlannedImage(position=position, identity=source.identity)

    def reusable(row: ImageEmbedding) -> bool:
        return not force and (row.vector is not None or not searchable)

    try:
        image.size = source.size()
    except (OSError, NotImplementedError):
        image.size = None
    for row in scored:
        if row.name == image.identity and (row.size is None or row.size == image.size) and reusable(row):
            return _reuse(image, row)
    try:
        data = source.read()
    except OSError as error:  # the file named by the field is gone or unreadable
        return _fail(image, f"unreadable: The image file could not be read: {error}")
    if not data:  # the field names a file, but the file is empty (an upload cut short)
        return _fail(image, _reason(ImageRejected("empty", "The image file is empty.")))
    image.sha256, image.size = hashlib.sha256(data).hexdigest(), len(data)
    for row in scored:
        if row.sha256 == image.sha256 and reusable(row):
            return _reuse(image, row)
    image.data = data
    return image


def _reuse(image: PlannedImage, row: ImageEmbedding) -> PlannedImage:
    image.reused, image.sha256, image.vector = row, row.sha256, row.vector
    image.verdict, image.scores = row.verdict, row.moderation_scores
    image.size = image.size if image.size is not None else row.size
    return image


def _fail(image: PlannedImage, reason: str) -> PlannedImage:
    image.verdict, image.error = ImageVerdict.ERROR, reason
    return image


def _reason(error: ImageRejected) -> str:
    """For staff (the row's error): the decoder's own words included."""
    return f"{error.code}: {error}"


# --------------------------------------------------------------------------- 2. embed


def embed(plans: Sequence[Plan], encoder: EncoderModel, loading: list[Future] | None = None) -> None:
    """Step 2: one model call over every new image of the batch, then moderation of each.
    ``loading``: the batch's decodes, if ``start_decoding`` started them earlier."""
    new = new_images(plans)
    if not new:
        return
    pipeline = pipeline_for(encoder)
    results = pipeline.images.finish(loading if loading is not None else start_decoding(plans, encoder))
    good = [(image, result.vector) for image, result in zip(new, results, strict=True)
            if result.vector is not None]
    verdicts = pipeline.moderator.judge(_stack([vector for _, vector in good], encoder.dimension))
    for image, result in zip(new, results, strict=True):
        image.data = None
        if result.error is not None:
            _fail(image, _reason(result.error))
    for (image, vector), verdict in zip(good, verdicts, strict=True):
        image.vector, image.scores = vector, verdict.scores
        image.verdict = ImageVerdict.FLAGGED if verdict.is_flagged else ImageVerdict.PASSED
        image.sampled = not verdict.is_flagged and pipeline.moderator.sampled(image.sha256)


def new_images(plans: Sequence[Plan]) -> list[PlannedImage]:
    """The images of the batch that step 2 must embed: new pixels."""
    return [image for p in plans for image in p.images if image.data is not None]


def start_decoding(plans: Sequence[Plan], encoder: EncoderModel) -> list[Future]:
    """Start decoding the batch's new images in the decode threads; ``embed`` takes the result."""
    return pipeline_for(encoder).images.start([image.data for image in new_images(plans)])


def _stack(vectors: list, dimension: int) -> np.ndarray:
    return np.vstack(vectors) if vectors else np.zeros((0, dimension), dtype=np.float32)


# --------------------------------------------------------------------------- 3. write


def write(registration: Registration, encoder: EncoderModel, planned: Plan) -> str:
    """Step 3 for one object (``write_many``)."""
    return write_many(registration, encoder, [planned])[0]


def write_many(registration: Registration, encoder: EncoderModel, plans: Sequence[Plan]) -> list[str]:
    """Step 3 (module docstring) for a batch, in one transaction and a fixed number of
    statements whatever the batch's size (a round of statements per object cost a reindex
    ~3 ms an image). Returns each plan's outcome: the product status written, ``"stale"``
    (dropped: the sources changed meanwhile) or ``"gone"`` (the object was deleted)."""
    if not plans:
        return []
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    outcomes = rows.retrying(lambda: _write_many(registration, encoder, content_type, plans))
    stale = [planned.pk for planned, outcome in zip(plans, outcomes, strict=True) if outcome == "stale"]
    if stale:
        from clip_search.tasks import enqueue

        transaction.on_commit(lambda: enqueue(registration.label, stale, encoder.pk))
    return outcomes


@dataclass
class _Written:
    """What one object's write changes, gathered so that the batch is written together."""

    planned: Plan
    row: Embedding
    images: list[ImageEmbedding]  # the object's image rows after the write, in display order
    status: str
    document: Document


def _write_many(registration: Registration, encoder: EncoderModel, content_type: ContentType,
                plans: Sequence[Plan]) -> list[str]:
    Embedding.objects.bulk_create(
        [Embedding(content_type=content_type, object_pk=planned.pk, encoder=encoder,
                   object_id=object_id(registration.model, planned.obj.pk)) for planned in plans],
        ignore_conflicts=True)
    locked = {row.object_pk: row for row in rows.lock_many(
        Embedding.objects.filter(content_type=content_type, encoder=encoder,
                                 object_pk__in=[planned.pk for planned in plans]))}
    current = {str(obj.pk): obj for obj in registration.fetch([planned.obj.pk for planned in plans])}
    tag_parts = tagging.documents_parts(registration, current)
    now, outcomes, gone, removed, fresh = timezone.now(), [], [], [], set()
    written: list[_Written] = []
    for planned in plans:
        row, obj = locked[planned.pk], current.get(planned.pk)
        if obj is None:
            gone.append(row.pk)
            outcomes.append("gone")
        elif registration.source_digest(obj) != planned.digest:
            outcomes.append("stale")
        else:
            images, changed, dropped = _image_rows(row, planned, encoder, content_type, now)
            status = rows.derive_status([image.verdict for image in images])
            for image in images:
                image.product_status = status
            fresh |= changed
            removed.extend(dropped)
            written.append(_Written(planned, row, images, status,
                                    document(registration, obj, tag_parts[planned.pk])))
            outcomes.append(status)
    if gone:
        Embedding.objects.filter(pk__in=gone).delete()
    if removed:
        ImageEmbedding.objects.filter(pk__in=removed).delete()
    _save_images([image for w in written for image in w.images], fresh)
    if written:
        writes.update_products([_row_values(w, now) for w in written],
                               config=clip_settings.SEARCH["TEXT_SEARCH_CONFIG"], now=now)
        _review(registration, written)
        searchable = max(sum(1 for image in w.images if image.vector is not None) for w in written)
        if searchable > encoder.max_images:  # read by the vector leg; rare, and only ever raised
            EncoderModel.objects.filter(pk=encoder.pk, max_images__lt=searchable).update(
                max_images=searchable)
    return outcomes


def _image_rows(row: Embedding, planned: Plan, encoder: EncoderModel, content_type: ContentType,
                now) -> tuple[list[ImageEmbedding], set[int], list[int]]:
    """The object's image rows after the write (unsaved), the pks among them whose vector
    changed, and the pks of rows of images it no longer has."""
    stored = {image.pk: image for image in row.images.all()}
    decided = {image.sha256: image.verdict for image in stored.values() if image.verdict in STAFF_DECISIONS}
    cap = clip_settings.MAX_IMAGES
    kept: list[ImageEmbedding] = []
    fresh: set[int] = set()
    for image in planned.images:
        verdict = image.verdict
        if verdict in (ImageVerdict.PASSED, ImageVerdict.FLAGGED) and image.sha256 in decided:
            verdict = decided[image.sha256]  # the staff decision stays with its image
        values = dict(position=image.position, name=image.identity[:500], size=image.size,
                      sha256=image.sha256, verdict=verdict, moderation_scores=image.scores, error=image.error)
        vector = None if image.vector is None or image.position >= cap else _as_list(image.vector)
        # The same image keeps its row (and its review items): found as reused, or by sha256
        # when it was embedded again (a forced re-embed).
        match = stored.pop(image.reused.pk, None) if image.reused else None
        if match is None and image.sha256:
            match = next((row for row in stored.values() if row.sha256 == image.sha256), None)
            match = match and stored.pop(match.pk)
        if match is not None:
            for name, value in values.items():
                setattr(match, name, value)
            if image.reused is None or (vector is None) != (match.vector is None):
                match.vector = vector
                fresh.add(match.pk)
            kept.append(match)
        else:
            kept.append(ImageEmbedding(embedding=row, embedded_at=now, vector=vector, encoder=encoder,
                                       content_type=content_type, object_pk=row.object_pk,
                                       object_id=row.object_id, **values))
    return kept, fresh, list(stored)


def _save_images(images: list[ImageEmbedding], fresh: set[int]) -> None:
    """New rows in one INSERT, the others in one UPDATE; a stored vector is rewritten only for
    the pks in ``fresh`` (rewriting an unchanged one would add an HNSW index entry)."""
    stored = [image for image in images if image.pk is not None]
    ImageEmbedding.objects.bulk_create([image for image in images if image.pk is None])
    writes.update_images([
        {"id": image.pk, "position": image.position, "name": image.name, "size": image.size,
         "sha256": image.sha256, "verdict": image.verdict, "moderation_scores": image.moderation_scores,
         "error": image.error, "product_status": image.product_status, "fresh": image.pk in fresh,
         "vector": VECTOR_FIELD.get_prep_value(image.vector) if image.pk in fresh else None}
        for image in stored])


VECTOR_FIELD = ImageEmbedding._meta.get_field("vector")  # its text form: what the ORM would write


def _row_values(written: _Written, now) -> dict[str, Any]:
    """The product row's new values, for ``sql.writes.update_products``."""
    planned, found = written.planned, written.document
    errors = image_errors(written.images)
    if errors:
        attempts, embedded = "increment", False
    elif any(image.reused is None for image in planned.images) or planned.force:
        attempts, embedded = "reset", True
    else:
        attempts, embedded = "keep", False
    return {"id": written.row.pk, "status": written.status, "error": errors, "source_digest": planned.digest,
            "attempts": attempts, "embedded": embedded, "parts": found.parts, "keywords": found.keywords,
            "keyword_tokens": found.keyword_tokens, "words": found.words, "suggestions": found.suggestions}


def _review(registration: Registration, written: list[_Written]) -> None:
    """Open an item for each newly flagged (or sampled) image; close the items of images the
    products no longer have. Only ever called from a write that is true to the current sources."""
    supersede_reviews([w.row.pk for w in written], keep=[image.pk for w in written for image in w.images])
    for w in written:
        sampled = {image.position for image in w.planned.images if image.sampled}
        for image in w.images:
            if image.verdict == ImageVerdict.FLAGGED:
                reason = ReviewItem.Reason.FLAGGED
            elif image.position in sampled:
                reason = ReviewItem.Reason.SAMPLED
            else:
                continue
            verdict = Verdict(scores=image.moderation_scores, flagged=_over_threshold(image))
            item, created = open_review(image, verdict, reason)
            if created and reason == ReviewItem.Reason.FLAGGED:
                row = Embedding.objects.get(pk=w.row.pk)  # as written (its fields held expressions)
                transaction.on_commit(lambda i=item, r=row, v=verdict: upload_flagged.send(
                    sender=registration.model, object_pk=r.object_pk, embedding=r, item=i, scores=v.scores))


def image_errors(images: Sequence[PlannedImage | ImageEmbedding]) -> str:
    """Why images failed, each named by its place: the row's ``error`` and the summary's."""
    return "; ".join(f"image {image.position + 1}: {image.error}" for image in images if image.error)


def _over_threshold(image: ImageEmbedding) -> list[str]:
    thresholds = {name: float(c["THRESHOLD"]) for name, c in clip_settings.MODERATION["CATEGORIES"].items()}
    return [name for name, score in image.moderation_scores.items() if score >= thresholds.get(name, 2.0)]


def _as_list(vector: Any) -> list[float]:
    return vector.tolist() if hasattr(vector, "tolist") else list(vector)


# --------------------------------------------------------------------------- the three together


def embed_objects(registration: Registration, objects: Sequence[models.Model], encoder: EncoderModel,
                  *, force: bool = False) -> Summary:
    """Plan, embed and write a batch (module docstring). Safe to run twice (idempotent)."""
    plans = plan(registration, objects, encoder, force=force)
    embed(plans, encoder)
    return write_plans(registration, encoder, plans)


def write_plans(registration: Registration, encoder: EncoderModel, plans: Sequence[Plan]) -> Summary:
    """Step 3 for an embedded batch, and its summary; unchanged objects are only marked seen."""
    summary = Summary()
    skipped = [planned.row.pk for planned in plans if planned.unchanged]
    if skipped:  # nothing to write; the time says they were seen (what ``clip_reindex --async`` follows)
        Embedding.objects.filter(pk__in=skipped).update(updated_at=timezone.now())
        summary.counts["skipped"] += len(skipped)
    todo = [planned for planned in plans if not planned.unchanged]
    for planned, outcome in zip(todo, write_many(registration, encoder, todo), strict=True):
        summary.counts[OUTCOMES.get(outcome, outcome)] += 1
        errors = image_errors(planned.images) if outcome == Status.ERROR else ""
        if errors:
            summary.errors[planned.pk] = errors
    return summary


OUTCOMES = {Status.INDEXED: "indexed", Status.FLAGGED: "flagged", Status.REJECTED: "rejected",
            Status.NO_IMAGE: "no_image", Status.ERROR: "failed", "stale": "superseded", "gone": "gone"}


def iter_objects(registration: Registration, pks: Iterable[str]) -> list[models.Model]:
    """The objects for ``pks`` (all objects of the model, not only the storefront's)."""
    return registration.fetch(pks)


def remove_object(registration: Registration, pk: str) -> int:
    """Delete every encoder's row of a deleted product."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    deleted, _ = Embedding.objects.filter(content_type=content_type, object_pk=str(pk)).delete()
    return deleted
