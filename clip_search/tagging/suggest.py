"""Suggestions: score products' stored image vectors against the label sets and keep the result.

No image is read again: a product's vector is the mean of its stored image vectors (several
shots of one product agree on its colour and kind; their mean is steadier than any one shot),
normalised. Each label at or over its set's ``MIN_CONFIDENCE`` becomes a suggested tag; a
suggestion the model no longer makes is withdrawn. Staff decisions stay as they are: a
rejected label is never suggested again for that product, an accepted one keeps the
confidence it was accepted on.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import CharField, Exists, OuterRef
from django.db.models.functions import Cast
from django.utils import timezone

from clip_search import rows
from clip_search.models import EncoderModel, ImageEmbedding, ProductTag
from clip_search.registry import Registration
from clip_search.routers import primary_reads
from clip_search.tagging.labels import LabelSet, Tagger, label_sets

Status = ProductTag.Status


@dataclass
class Tagged:
    """What a tagging run did: products scored, products without a vector to score, and the
    suggestions stored (new or refreshed) and withdrawn."""

    products: int = 0
    without_vectors: int = 0
    suggested: int = 0
    withdrawn: int = 0

    def add(self, other: Tagged) -> Tagged:
        self.products += other.products
        self.without_vectors += other.without_vectors
        self.suggested += other.suggested
        self.withdrawn += other.withdrawn
        return self


def product_vectors(content_type: ContentType, encoder: EncoderModel,
                    keys: list[str]) -> dict[str, np.ndarray]:
    """Each product's mean image vector (normalised) for ``encoder``; products without one are
    left out (no image, not embedded yet, or only unreadable images)."""
    sums: dict[str, np.ndarray] = {}
    for key, vector in ImageEmbedding.objects.filter(
            content_type=content_type, encoder=encoder, object_pk__in=keys, vector__isnull=False,
    ).values_list("object_pk", "vector"):
        vector = np.asarray(vector, dtype=np.float64)
        sums[key] = sums[key] + vector if key in sums else vector
    return {key: total / np.linalg.norm(total) for key, total in sums.items()}


BATCH = 500  # products scored and stored per transaction


@primary_reads()
def suggest(registration: Registration, pks: Iterable[Any], *, encoder: EncoderModel | None = None,
            sets: Iterable[str] | None = None) -> Tagged:
    """Suggest tags for these products of ``registration`` from the ``encoder``'s vectors (the
    active one by default), for every configured label set or those named; a transaction per
    ``BATCH`` products."""
    from clip_search.indexing import active_encoder

    keys = list(dict.fromkeys(str(pk) for pk in pks))
    chosen = label_sets(sets)
    encoder = encoder or active_encoder()
    if not keys or not chosen or encoder is None:
        return Tagged(without_vectors=len(keys) if chosen else 0)
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    tagger, tagged = Tagger(encoder, chosen), Tagged()
    for start in range(0, len(keys), BATCH):
        batch = keys[start:start + BATCH]
        vectors = product_vectors(content_type, encoder, batch)
        tagged.add(Tagged(products=len(vectors), without_vectors=len(batch) - len(vectors)))
        if vectors:
            scores = dict(zip(vectors, tagger.score(np.vstack(list(vectors.values()))), strict=True))
            suggested, withdrawn = rows.retrying(lambda s=scores: _store(content_type, encoder, chosen, s))
            tagged.add(Tagged(suggested=suggested, withdrawn=withdrawn))
    return tagged


def _store(content_type: ContentType, encoder: EncoderModel, sets: list[LabelSet],
           scores: dict[str, dict[str, list[tuple[str, float]]]]) -> tuple[int, int]:
    """Write the suggestions of ``scores`` (by product key, then set); (stored, withdrawn)."""
    now = timezone.now()
    # Locked: a staff decision made meanwhile waits, or is seen (and its row left as decided).
    locked = ProductTag.objects.select_for_update().filter(
        content_type=content_type, object_pk__in=list(scores), label_set__in=[s.name for s in sets])
    stored = {(tag.object_pk, tag.label_set, tag.label): tag for tag in locked}
    create, update, keep = [], [], set()
    for key, per_set in scores.items():
        for label_set in sets:
            for label, confidence in per_set[label_set.name]:
                if confidence < label_set.min_confidence:
                    break  # most probable first
                tag = stored.get((key, label_set.name, label))
                keep.add((key, label_set.name, label))
                if tag is None:
                    create.append(ProductTag(content_type=content_type, object_pk=key,
                                             label_set=label_set.name, label=label, confidence=confidence,
                                             encoder=encoder, suggested_at=now))
                elif tag.status == Status.SUGGESTED:
                    tag.confidence, tag.encoder, tag.suggested_at = confidence, encoder, now
                    update.append(tag)
    ProductTag.objects.bulk_create(create, ignore_conflicts=True)  # a concurrent run made it meanwhile
    ProductTag.objects.bulk_update(update, ["confidence", "encoder", "suggested_at"])
    stale = [tag.pk for index, tag in stored.items() if index not in keep and tag.status == Status.SUGGESTED]
    withdrawn, _ = ProductTag.objects.filter(pk__in=stale).delete()
    return len(create) + len(update), withdrawn


def to_tag(registration: Registration, encoder: EncoderModel, *, missing_only: bool = False,
           sets: Iterable[str] | None = None) -> models.QuerySet:
    """The products with an image vector for ``encoder``, by pk; ``missing_only``: those without
    a tag from it in one of the sets yet (a set added since, a killed run; a product whose
    labels all scored under MIN_CONFIDENCE has none, so it is scored again: cheap, no image is
    read)."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    key = Cast(OuterRef("pk"), CharField())
    queryset = registration.model._default_manager.order_by("pk").filter(Exists(ImageEmbedding.objects.filter(
        content_type=content_type, encoder=encoder, object_pk=key, vector__isnull=False)))
    if missing_only:
        chosen = label_sets(sets)
        if not chosen:
            return queryset.none()
        tags = ProductTag.objects.filter(content_type=content_type, encoder=encoder, object_pk=key)
        queryset = queryset.filter(reduce(operator.or_, (~Exists(tags.filter(label_set=label_set.name))
                                                         for label_set in chosen)))
    return queryset


def tag_batches(registration: Registration, encoder: EncoderModel, *, batch_size: int,
                missing_only: bool = False, sets: Iterable[str] | None = None) -> Iterator[list[Any]]:
    """Pks of ``to_tag`` in batches, by key (``pk > last``), so a rerun resumes."""
    queryset, last = to_tag(registration, encoder, missing_only=missing_only, sets=sets), None
    while True:
        pks = list((queryset if last is None else queryset.filter(pk__gt=last)).values_list("pk", flat=True)
                   [:batch_size])
        if not pks:
            return
        last = pks[-1]
        yield pks


@primary_reads()
def tag_catalog(registration: Registration, encoder: EncoderModel, *, batch_size: int = BATCH,
                missing_only: bool = False, sets: Iterable[str] | None = None,
                progress: Callable[[int], None] = lambda n: None) -> Tagged:
    """Suggest tags for the whole catalog (``manage.py clip_tag``), a transaction per batch."""
    sets = None if sets is None else list(sets)
    tagged = Tagged()
    batches = tag_batches(registration, encoder, batch_size=batch_size, missing_only=missing_only, sets=sets)
    for pks in batches:
        tagged.add(suggest(registration, pks, encoder=encoder, sets=sets))
        progress(len(pks))
    return tagged


def delete_orphans(registration: Registration) -> int:
    """Tags of products that no longer exist (deleted by raw SQL, or before tagging knew)."""
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    manager = registration.model._default_manager
    existing = manager.annotate(clip_key=Cast("pk", CharField())).values("clip_key")
    deleted, _ = ProductTag.objects.filter(content_type=content_type).exclude(object_pk__in=existing).delete()
    return deleted
