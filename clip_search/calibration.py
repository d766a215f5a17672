"""The vector leg's relevance floor, measured per encoder on its own index.

A text query's cosine similarities mean nothing in the absolute: they differ between encoders
(0.2–0.35 for ViT-B-32, 0.5–0.8 for the demo's small model) and between catalogs. So both
numbers of the floor are measured by searching the encoder's own index as a query would:

- **noise floor**: made-up words match nothing a catalog sells; the best similarity they reach
  anyway is what "nothing" looks like. Its ``NOISE_QUANTILE`` (0.99) is the similarity a hit
  needs when none of the query's words matches any product's text or keywords ("xqzvbl", or a
  colour only the pictures show: then the pictures must be convincing).
- **window**: a product's own title, searched, should find the product's own picture near the
  top; how far behind the best hit the picture lands, at ``TITLE_QUANTILE`` (0.9) of a sample
  of titles, is how far behind a query's best hit a relevant hit may be. Vector hits further
  behind are dropped, so a query counts only products it is about.

``clip_reindex`` calibrates when it finishes, the sweep when the encoder never was or the number
of indexed products moved by ``RECALIBRATE_AFTER`` (a quarter) since; ``clip_calibrate``
prints the figures. Measured on the demo catalog (bench/README.md): a made-up word finds
nothing, and the window keeps 0.91 of the colour + category matches of a query.
"""

from __future__ import annotations

import logging
import random
import string
from dataclasses import dataclass

import numpy as np
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models import Value
from django.db.models.functions import MD5, Concat
from django.utils import timezone

from clip_search import sql
from clip_search.conf import clip_settings
from clip_search.models import Embedding, EncoderModel, ImageEmbedding
from clip_search.registry import Registration, registry

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    noise_floor: float  # cosine similarity
    window: float | None  # similarity difference; None without a title to measure it
    noise_queries: int
    title_queries: int
    objects: int


def relevance(encoder: EncoderModel) -> tuple[float | None, float | None]:
    """(floor, window) as cosine *distances* for the statement, from ``SEARCH["RELEVANCE"]``:
    "auto" takes the encoder's calibration (None while it has none), a number is used as given."""
    options = clip_settings.SEARCH["RELEVANCE"]
    floor = encoder.noise_floor if options["FLOOR"] == "auto" else options["FLOOR"]
    window = encoder.relevance_window if options["WINDOW"] == "auto" else options["WINDOW"]
    return (None if floor is None else 1.0 - float(floor)), (None if window is None else float(window))


NOISE_SEED = 1


def made_up_words(count: int, seed: int) -> list[str]:
    """Letters in no language: what a query that matches nothing looks like to the encoder."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    return ["".join(rng.choice(letters) for _ in range(rng.randint(4, 10))) for _ in range(count)]


def calibrate(encoder: EncoderModel | None = None) -> Calibration | None:
    """Measure and store the encoder's floor and window (module docstring). None when nothing
    is indexed yet."""
    from clip_search.encoders import get_text_encoder
    from clip_search.indexing import spec_for

    encoder = encoder or EncoderModel.objects.get(is_active=True)
    options = clip_settings.CALIBRATION
    indexed = Embedding.objects.filter(encoder=encoder, status=Embedding.Status.INDEXED)
    objects = indexed.count()
    if not objects:
        return None
    text_encoder = get_text_encoder(spec_for(encoder), encoder.fingerprint)
    # The same made-up words for every encoder (and every row id): floors compare, and a
    # catalog's calibration does not change with the order rows were created in.
    noise = made_up_words(options["NOISE_QUERIES"], seed=NOISE_SEED)
    noise_best = _best_similarities(encoder, text_encoder.encode(noise))
    titles, own = _titles(encoder, options["TITLE_QUERIES"])
    gaps = []
    if titles:
        vectors = text_encoder.encode(titles)
        best = _best_similarities(encoder, vectors)
        own_best = [max(float(np.dot(vector, image)) for image in images) for vector, images in
                    zip(vectors, own, strict=True)]
        gaps = [max(0.0, b - o) for b, o in zip(best, own_best, strict=True)]
    result = Calibration(
        noise_floor=float(np.quantile(noise_best, options["NOISE_QUANTILE"])),
        window=float(np.quantile(gaps, options["TITLE_QUANTILE"])) if gaps else None,
        noise_queries=len(noise), title_queries=len(titles), objects=objects)
    EncoderModel.objects.filter(pk=encoder.pk).update(
        noise_floor=result.noise_floor, relevance_window=result.window, calibrated_at=timezone.now(),
        calibrated_objects=objects)
    logger.info("clip_search calibrated %s: noise floor %.3f, window %s over %d objects", encoder,
                result.noise_floor, "none" if result.window is None else f"{result.window:.3f}", objects)
    return result


def calibrate_if_stale(encoder: EncoderModel) -> Calibration | None:
    """``calibrate`` when the encoder never was, or its indexed catalog grew or shrank by
    ``RECALIBRATE_AFTER`` since (the sweep calls this)."""
    if encoder.calibrated_at is not None and encoder.calibrated_objects:
        objects = Embedding.objects.filter(encoder=encoder, status=Embedding.Status.INDEXED).count()
        drift = abs(objects - encoder.calibrated_objects) / encoder.calibrated_objects
        if drift < clip_settings.CALIBRATION["RECALIBRATE_AFTER"]:
            return None
    return calibrate(encoder)


def _best_similarities(encoder: EncoderModel, vectors: np.ndarray) -> list[float]:
    """Each query's best cosine similarity over the encoder's indexed images, through its HNSW
    index as the vector leg reads it."""
    best = []
    with transaction.atomic():
        sql.set_local_search_params(ef_search=clip_settings.SEARCH["EF_SEARCH"],
                                    iterative_scan=clip_settings.SEARCH["ITERATIVE_SCAN"])
        for vector in vectors:
            distance = sql.nearest_distance(encoder.pk, encoder.dimension, vector,
                                            [str(Embedding.Status.INDEXED)])
            if distance is not None:
                best.append(1.0 - distance)
    return best


def _titles(encoder: EncoderModel, count: int) -> tuple[list[str], list[list[np.ndarray]]]:
    """A random sample of indexed products' heaviest text (their title), with their images'
    vectors, over every registered model."""
    titles, images = [], []
    registrations = list(registry)
    for registration in registrations:
        sample = _sample(registration, encoder, max(1, count // len(registrations)))
        for obj, vectors in sample:
            parts = registration.text_parts(obj)
            if parts and parts[0][1]:
                titles.append(parts[0][1][:300])
                images.append(vectors)
    return titles, images


def _sample(registration: Registration, encoder: EncoderModel, count: int) -> list[tuple]:
    content_type = ContentType.objects.get_for_model(registration.model, for_concrete_model=False)
    # A sample that is the same on every run for this encoder (a hash of the key, not random()),
    # so calibrating twice gives the same figures.
    shuffled = MD5(Concat("object_pk", Value(f":{encoder.pk}")))
    pks = list(Embedding.objects.filter(content_type=content_type, encoder=encoder,
                                        status=Embedding.Status.INDEXED)
               .order_by(shuffled).values_list("object_pk", flat=True)[:count])
    vectors: dict[str, list[np.ndarray]] = {}
    for pk, vector in ImageEmbedding.objects.filter(
            content_type=content_type, encoder=encoder, object_pk__in=pks, vector__isnull=False,
    ).values_list("object_pk", "vector"):
        vectors.setdefault(pk, []).append(np.asarray(vector, dtype=np.float32))
    objects = registration.fetch(pks)
    return [(obj, vectors[str(obj.pk)]) for obj in objects if str(obj.pk) in vectors]
