"""Hybrid search on the demo catalog with the project's trained model, on real PostgreSQL."""

from __future__ import annotations

import random

import numpy as np
import pytest

from clip_search.models import Embedding, EncoderModel, ImageEmbedding
from clip_search.search import SearchError, search
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import embedded_catalog, encoder_weights_deleted

CATALOG_SIZE = 400


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """400 drawn products, embedded once for the module (committed, then deleted)."""
    specs = generate_catalog(CATALOG_SIZE, seed=2024)
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker) as rows:
        yield rows


@pytest.fixture
def searchable(catalog, db):
    """The products the storefront may show: indexed (the model's false positives are not)."""
    indexed = set(Embedding.objects.filter(status=Embedding.Status.INDEXED)
                  .values_list("object_pk", flat=True))
    return [(spec, product) for spec, product in catalog if str(product.pk) in indexed]


def pks(results) -> list[int]:
    return [product.pk for product in results]


def test_an_exact_sku_is_always_first(searchable):
    rng = random.Random(1)
    for spec, product in rng.sample(searchable, 60):
        for query in (spec.sku, spec.sku.lower(), f"{spec.sku} {spec.colour}"):
            results = search(Product.objects.all(), text=query)
            assert pks(results)[:1] == [product.pk], query
            assert results[0].keyword_exact and results[0].search_rank == 1


def test_a_partial_sku_finds_its_product(searchable):
    """A query with a digit reads the trigram index: the SKU without its brand code still matches."""
    rng = random.Random(2)
    for spec, product in rng.sample(searchable, 20):
        partial = spec.sku.split("-", 1)[1]  # "MUG-01234" of "BWL-MUG-01234"
        results = list(search(Product.objects.all(), text=partial))
        # Not an exact value, so no boost: its keyword rank 1 may tie with the vector leg's first.
        top = {hit.pk: hit for hit in results[:2]}
        assert product.pk in top, partial
        assert top[product.pk].keyword_rank == 1 and not top[product.pk].keyword_exact


def test_a_brand_keeps_the_products_the_other_legs_found(searchable):
    """A brand matches more products than the keyword leg keeps (as at any real catalog size):
    it keeps those the vector leg found, the only ones the fusion can lift."""
    spec, _product = searchable[11]
    results = list(search(Product.objects.all(), text=spec.brand, depth={"keyword": 5},
                          weights={"fulltext": 0}))
    keyword_hits = [hit for hit in results if hit.keyword_rank]
    assert len(keyword_hits) == 5
    assert all(hit.brand.name == spec.brand and hit.keyword_exact and hit.vector_rank for hit in keyword_hits)


def test_a_misspelt_brand_still_matches_its_products(searchable):
    brands = sorted({spec.brand for spec, _product in searchable if " " not in spec.brand})
    for brand in brands[:4]:
        typo = (brand[:2] + brand[3:]).lower()  # "alenglow"
        # Corrected against the catalog's own words, then an exact keyword value ...
        results = search(Product.objects.all(), text=typo)
        assert results.search_info.corrected_query == brand.lower(), brand
        keyword_hits = [hit for hit in results if hit.keyword_rank]
        assert keyword_hits and all(hit.brand.name == brand and hit.keyword_exact for hit in keyword_hits)
        # ... and as typed (no correction) the trigram match still finds a cut-short brand, without
        # the boost (a word the catalog has by its stem, "alpenglo", is never corrected).
        as_typed = search(Product.objects.all(), text=brand[:-1].lower(), correct=False)
        keyword_hits = [hit for hit in as_typed if hit.keyword_rank]
        assert as_typed.search_info.corrected_query is None and keyword_hits, brand
        assert all(hit.brand.name == brand and not hit.keyword_exact for hit in keyword_hits), brand


def test_results_are_the_shops_queryset_annotated_with_score_and_leg_ranks(searchable):
    results = search(Product.objects.filter(in_stock=True), text="red mug")
    hits = list(results)
    assert hits and all(p.in_stock for p in hits)
    scores = [p.search_score for p in hits]
    assert scores == sorted(scores, reverse=True)
    assert [p.search_rank for p in hits] == list(range(1, len(hits) + 1))
    assert any(p.vector_rank for p in hits) and any(p.fulltext_rank for p in hits)
    top = hits[0]
    explained = results.search_info.explain(top)
    assert explained["score"] == pytest.approx(top.search_score)
    assert explained["vector"] is None or explained["vector"]["rank"] == top.vector_rank
    # The queryset stays the shop's: further filtering and counting work and keep the info.
    narrowed = results.filter(price__lt=1000)
    assert narrowed.count() <= results.count() and narrowed.search_info is results.search_info


def test_flagged_products_never_appear(catalog, db):
    knives = [product for spec, product in catalog if spec.is_unsafe]
    flagged = Embedding.objects.filter(status=Embedding.Status.FLAGGED)
    assert flagged.count() >= 1  # the model flags drawn knives (test_demo_model.py measures how well)
    flagged_pks = {int(pk) for pk in flagged.values_list("object_pk", flat=True)}
    for knife in knives:
        for query in (knife.sku, knife.title, "knife", "a photo of a knife"):
            assert not flagged_pks & set(pks(search(Product.objects.all(), text=query))), query
    staff = search(Product.objects.all(), text="knife", include_quarantined=True)
    assert flagged_pks & set(pks(staff))


def test_more_like_this_excludes_the_product_and_finds_its_category(searchable):
    spec, product = searchable[0]
    results = list(search(Product.objects.all(), like=product, limit=10))
    assert product.pk not in pks(results) and len(results) == 10
    # Looks alike: the same kind of product or the same colour (the small model sees colour first).
    spec_of = {product.pk: other for other, product in searchable}
    alike = sum(1 for hit in results if spec.pair[0] == spec_of[hit.pk].colour
                or spec.category == spec_of[hit.pk].category)
    assert alike >= 5, [hit.title for hit in results]


def test_image_query_finds_the_same_product(searchable):
    spec, product = searchable[3]
    results = search(Product.objects.all(), image=product.image.open("rb").read(), limit=5)
    assert product.pk in pks(results)[:3]


def test_text_and_image_together(searchable):
    spec, product = searchable[5]
    results = list(search(Product.objects.all(), text=spec.brand, image=product.image.open("rb").read(),
                          limit=10))
    assert all(hit.brand.name == spec.brand for hit in results)  # the words narrow ...
    assert product.pk in pks(results)  # ... and the picture ranks within them


def test_like_without_embedding_is_a_clear_error(db):
    with pytest.raises(SearchError):
        search(Product.objects.all(), like=123456789)


@pytest.mark.parametrize("query", [
    "", "   ", "x" * 10_000, "'; DROP TABLE catalog_product; --", "red\x00mug", "🔪 ∑ Ω ß",
    "\u202eevil", "a & b | !c", "\"unterminated", "<script>alert(1)</script>", "%", "_", "\\",
])
def test_hostile_and_odd_queries_are_answered(searchable, query):
    results = search(Product.objects.all(), text=query)
    list(results)  # no exception; an empty query returns nothing
    assert Product.objects.count() == CATALOG_SIZE
    if len(query) > 1000:
        assert results.search_info.truncated


def test_without_a_text_encoder_the_keyword_legs_answer_and_say_so(searchable, tmp_path, demo_model_dir):
    """A real missing model: the active encoder's directory is deleted, not a mock."""
    spec, product = searchable[7]
    with encoder_weights_deleted(demo_model_dir, tmp_path):
        results = search(Product.objects.all(), text=spec.sku)
        assert pks(results)[0] == product.pk
        assert results.search_info.is_degraded and "vector" in results.search_info.degraded
        assert results.search_info.legs == ["fulltext", "keyword"]


def exact_top10(queryset, query_vector, dimension, limit=10):
    """Sequential scan: what the HNSW leg should have returned for this filter."""
    rows = ImageEmbedding.objects.filter(
        product_status=Embedding.Status.INDEXED,
        object_pk__in=[str(pk) for pk in queryset.values_list("pk", flat=True)])
    best: dict[str, float] = {}  # each product's best image
    for pk, vector in rows.values_list("object_pk", "vector"):
        best[pk] = max(best.get(pk, -2.0), float(np.asarray(vector, np.float32) @ query_vector))
    return [int(pk) for pk, _ in sorted(best.items(), key=lambda item: -item[1])[:limit]]


def test_filtered_vector_search_matches_an_exact_scan(searchable):
    from clip_search.search import _text_vector

    encoder = EncoderModel.objects.get(is_active=True)
    filters = [{"category__slug": "mug"}, {"brand__name": searchable[0][0].brand}, {"price__lt": 20},
               {"in_stock": False}]
    queries = ["a red mug", "blue shoes", "green lamp", "a black backpack", "white hat"]
    agree = total = 0
    for where in filters:
        queryset = Product.objects.filter(**where)
        for query in queries:
            expected = exact_top10(queryset, _text_vector(query, encoder), encoder.dimension)
            got = pks(search(queryset, text=query, weights={"fulltext": 0, "keyword": 0}, limit=10))
            total += 1
            agree += got == expected
    assert agree / total >= 0.9, f"{agree}/{total}"


def ndcg_at_10(ranked: list[int], grades: dict[int, int]) -> float:
    gains = [grades.get(pk, 0) for pk in ranked[:10]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(grades.values(), reverse=True)[:10]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mixed_queries(searchable, count=40, seed=3):
    """"<brand> <colour> <category>" queries with at least 3 exact products in the catalog.

    Grades: 2 = brand, colour and category all match; 1 = the colour and category match
    (the look asked for, another brand).
    """
    from shop_demo.catalog.generator import category_nouns

    rng = random.Random(seed)
    by_key: dict[tuple, list] = {}
    for spec, product in searchable:
        by_key.setdefault((spec.brand, spec.colour, spec.category), []).append((spec, product))
    keys = sorted(key for key, members in by_key.items() if len(members) >= 1)
    queries = []
    for brand, colour, category in rng.sample(keys, min(count, len(keys))):
        spec = by_key[(brand, colour, category)][0][0]
        noun = category_nouns(spec)[0]
        grades = {product.pk: 1 for s, product in searchable if (s.colour, s.category) == (colour, category)}
        grades.update({product.pk: 2 for _, product in by_key[(brand, colour, category)]})
        queries.append((f"{brand} {colour} {noun}", grades))
    return queries


LEG_ONLY = {
    "vector": {"fulltext": 0, "keyword": 0},
    "fulltext": {"vector": 0, "keyword": 0},
    "keyword": {"vector": 0, "fulltext": 0},
    "fused": {},
}


def test_hybrid_beats_every_single_leg_on_brand_plus_visual_queries(searchable, capsys):
    queries = mixed_queries(searchable)
    scores = {name: [] for name in LEG_ONLY}
    for query, grades in queries:
        for name, weights in LEG_ONLY.items():
            ranked = pks(search(Product.objects.all(), text=query, weights=weights, limit=10))
            scores[name].append(ndcg_at_10(ranked, grades))
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    with capsys.disabled():
        print("\nnDCG@10 over", len(queries), "brand + colour + category queries:",
              ", ".join(f"{name} {value:.3f}" for name, value in means.items()))
    for leg in ("vector", "fulltext", "keyword"):
        assert means["fused"] > means[leg], means


def test_a_repeated_query_is_answered_from_the_query_cache(searchable, caplog, monkeypatch):
    from clip_search import encoders
    from clip_search.encoders import query_cache as text_module
    from clip_search.indexing import spec_for

    encoders.reset()
    text_encoder = encoders.get_text_encoder(spec_for(EncoderModel.objects.get(is_active=True)))
    forwards = []
    real_encode = text_encoder.encode
    monkeypatch.setattr(text_encoder, "encode", lambda texts: forwards.append(texts) or real_encode(texts))
    monkeypatch.setattr(text_module, "CACHE_LOG_EVERY", 2)
    first = pks(search(Product.objects.all(), text="red coffee mug"))
    with caplog.at_level("INFO", logger="clip_search"):
        again = pks(search(Product.objects.all(), text="  Red COFFEE   mug "))  # same words
    assert again == first and len(forwards) == 1  # the encoder ran once
    assert text_encoder.cache_info()[:2] == (1, 1)
    assert "query cache: 50 % hits over 2 queries" in caplog.text
