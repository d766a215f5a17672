"""A multimodal product vector (Marqo's and Weaviate's blend of image and text fields), measured
before it is offered: each product's stored vector replaced by normalise((1 - w) · image + w ·
text(title)), the relevance floor calibrated again (as clip_reindex would; on the same sample of
titles for every w), then nDCG@10 of the demo catalog's queries through ``search()``, for w in 0,
0.2 and 0.4: words (the vector leg alone, and fused), a product's picture, and "more like this".

Two kinds of title: the demo's own, which always name the colour and the kind of product ("Nordvik
red mug"), and the same titles without those words ("Nordvik classic"), as a catalog whose
titles name a product line rather than its look. The stored vectors are put back afterwards.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
from django.db import connection

from clip_search import calibration
from clip_search.encoders import get_text_encoder
from clip_search.indexing import spec_for
from clip_search.models import Embedding, EncoderModel, ImageEmbedding
from clip_search.search import search
from shop_demo.catalog.generator import COLOURS, category_nouns, generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import embedded_catalog
from tests.test_search import LEG_ONLY, mixed_queries, ndcg_at_10, pks

WEIGHTS = (0.0, 0.2, 0.4)


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    specs = generate_catalog(400, seed=2024)
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker) as rows:
        yield rows


def colour_category_queries(searchable, count=40, seed=5):
    """"<colour> <noun>" for 40 (colour, category) pairs; grade 1 = that colour and category."""
    rng = random.Random(seed)
    pairs = sorted({(spec.colour, spec.category, category_nouns(spec)[0]) for spec, _ in searchable})
    return [(f"{colour} {noun}", {product.pk: 1 for spec, product in searchable
                                  if (spec.colour, spec.category) == (colour, category)})
            for colour, category, noun in rng.sample(pairs, count)]


def without_look(spec) -> str:
    """The title without its colour and its kind of product: "Nordvik classic"."""
    words = {spec.colour, *category_nouns(spec), *" ".join(category_nouns(spec)).split(), *COLOURS}
    kept = [word for word in re.split(r"[\s,()-]+", spec.title) if word and word.lower() not in words]
    return " ".join(kept) or spec.brand


def blend(raw: dict[int, np.ndarray], text: dict[int, np.ndarray], weight: float) -> None:
    for pk, vector in raw.items():
        mixed = (1 - weight) * vector + weight * text[pk]
        ImageEmbedding.objects.filter(pk=pk).update(vector=(mixed / np.linalg.norm(mixed)).tolist())


def calibrate(encoder: EncoderModel):
    """The calibration samples titles at random (ORDER BY random()): the same sample for every w."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.25)")
    return calibration.calibrate(encoder)


def columns(searchable) -> dict[str, tuple[list[tuple[dict, dict]], dict]]:
    """Each measured column: its queries (``search()`` arguments, grades) and search options."""
    brand = [({"text": q}, grades) for q, grades in mixed_queries(searchable)]
    look = [({"text": q}, grades) for q, grades in colour_category_queries(searchable)]
    shown = random.Random(9).sample(searchable, 40)
    alike = {spec.pair: {p.pk for s, p in searchable if s.pair == spec.pair} for spec, _ in shown}
    pictures = [({"image": product.image.open("rb").read()}, dict.fromkeys(alike[spec.pair], 1))
                for spec, product in shown]
    similar = [({"like": product}, dict.fromkeys(alike[spec.pair] - {product.pk}, 1))
               for spec, product in shown]
    vector = {"weights": LEG_ONLY["vector"]}
    return {"brand+colour+kind vector": (brand, vector), "brand+colour+kind fused": (brand, {}),
            "colour+kind vector": (look, vector), "colour+kind fused": (look, {}),
            "by picture": (pictures, {}), "similar": (similar, {})}


def mean_ndcg(queries: list[tuple[dict, dict]], options: dict) -> float:
    return float(np.mean([ndcg_at_10(pks(search(Product.objects.all(), limit=10, **query, **options)), grades)
                          for query, grades in queries]))


def test_blending_the_title_into_the_image_vector(catalog, db, capsys):
    indexed = set(Embedding.objects.filter(status=Embedding.Status.INDEXED).values_list("object_pk",
                                                                                          flat=True))
    searchable = [(spec, product) for spec, product in catalog if str(product.pk) in indexed]
    spec_of = {str(product.pk): spec for spec, product in catalog}
    encoder = EncoderModel.objects.get(is_active=True)
    rows = list(ImageEmbedding.objects.values_list("pk", "object_pk", "vector"))
    raw = {pk: np.asarray(vector, np.float64) for pk, _, vector in rows}
    encode = get_text_encoder(spec_for(encoder)).encode
    titles = {"own titles": [spec_of[key].title for _, key, _ in rows],
              "titles without colour or kind": [without_look(spec_of[key]) for _, key, _ in rows]}
    measured = columns(searchable)

    table: dict[tuple[str, float], dict[str, float]] = {}
    try:
        for name, texts in titles.items():
            text = dict(zip(raw, encode(texts), strict=True))
            for weight in WEIGHTS:
                if weight == 0 and table:  # the pictures alone, whatever the titles
                    table[(name, weight)] = table[next(iter(table))]
                    continue
                blend(raw, text, weight)
                window = calibrate(encoder).window
                table[(name, weight)] = {column: mean_ndcg(queries, options)
                                         for column, (queries, options) in measured.items()}
                table[(name, weight)]["window"] = window
    finally:
        blend(raw, raw, 0.0)
        calibrate(encoder)
    for pk, vector in ImageEmbedding.objects.values_list("pk", "vector")[:20]:
        np.testing.assert_allclose(vector, raw[pk], atol=1e-6)  # put back
    names = list(next(iter(table.values())))
    lines = [" | ".join(["titles", "w", *names]), " | ".join(["---"] * (len(names) + 2))]
    lines += [" | ".join([name, f"{weight:.1f}", *(f"{value:.3f}" for value in row.values())])
              for (name, weight), row in table.items()]
    with capsys.disabled():
        print(f"\nnDCG@10, {len(searchable)} searchable demo products, 40 queries a column:\n"
              + "\n".join(lines))
    # Why the blend is off by default: where titles do not describe the look, it pulls every
    # product towards its words and away from its picture, and the visual queries pay.
    pictures, plain = table[("own titles", 0.0)], table[("titles without colour or kind", 0.4)]
    assert plain["colour+kind vector"] < pictures["colour+kind vector"] - 0.1, table
