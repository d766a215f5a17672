import numpy as np
import pytest
from django.db import connection, transaction

from clip_search import sql
from clip_search.expressions import cosine_distance
from clip_search.models import Embedding, EncoderModel, ImageEmbedding
from shop_demo.catalog.models import Product

pytestmark = pytest.mark.django_db


def test_migrations_created_the_extensions_and_indexes():
    with connection.cursor() as cursor:
        cursor.execute("SELECT extname FROM pg_extension WHERE extname IN ('vector', 'pg_trgm') ORDER BY 1")
        assert [r[0] for r in cursor.fetchall()] == ["pg_trgm", "vector"]
        cursor.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                       "WHERE attrelid = 'clip_search_imageembedding'::regclass AND attname = 'vector'")
        assert cursor.fetchone()[0] == "vector"  # untyped: each encoder has its own dimension
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename IN "
                       "('clip_search_embedding', 'clip_search_imageembedding')")
        definitions = " ".join(r[0] for r in cursor.fetchall())
    assert "USING gin (keywords gin_trgm_ops)" in definitions
    assert "USING gin (search_document)" in definitions
    # The typed key: a filter on the shop's integer pks reads both tables by index.
    assert "clip_search_embedding USING btree (object_id, content_type_id, encoder_id)" in definitions
    assert "clip_search_imageembedding USING btree (object_id, content_type_id, encoder_id)" in definitions


def _fill(encoder: EncoderModel, count: int, seed: int = 0) -> np.ndarray:
    """``count`` indexed products of one image each, with random unit vectors."""
    from django.contrib.contenttypes.models import ContentType

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, encoder.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    content_type = ContentType.objects.get_for_model(Product)
    rows = Embedding.objects.bulk_create(
        Embedding(content_type=content_type, object_pk=str(i), object_id=i, encoder=encoder,
                  status=Embedding.Status.INDEXED)
        for i in range(count))
    ImageEmbedding.objects.bulk_create(
        ImageEmbedding(embedding=row, vector=v, verdict=ImageEmbedding.Verdict.PASSED, encoder=encoder,
                       content_type=content_type, object_pk=row.object_pk, object_id=row.object_id,
                       product_status=Embedding.Status.INDEXED)
        for row, v in zip(rows, vectors, strict=True))
    return vectors


def test_hnsw_index_is_created_once_and_used_by_the_knn_query():
    encoder = EncoderModel.objects.create(name="ViT-B-32", pretrained="test", fingerprint="f" * 64,
                                          dimension=512, is_active=True)
    other = EncoderModel.objects.create(name="tiny", pretrained="test", fingerprint="e" * 64,
                                        dimension=64)
    vectors = _fill(encoder, 3000)
    _fill(other, 500, seed=1)
    assert sql.ensure_vector_index(encoder.pk, encoder.dimension) is True
    assert sql.ensure_vector_index(encoder.pk, encoder.dimension) is False  # idempotent
    assert sql.ensure_vector_index(other.pk, other.dimension) is True
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE clip_search_imageembedding")

    query = vectors[7]
    knn = (
        ImageEmbedding.objects.filter(encoder=encoder)
        .annotate(distance=cosine_distance(encoder.dimension, query))
        .order_by("distance")[:10]
    )
    plan = knn.explain()
    assert sql.vector_index_name(encoder.pk) in plan, plan
    hits = list(knn)
    assert hits[0].object_pk == "7" and hits[0].distance == pytest.approx(0.0, abs=1e-5)

    exact = np.argsort(-(vectors @ query))[:10]
    assert [int(h.object_pk) for h in hits][:5] == list(exact[:5])


def test_one_row_per_object_and_encoder():
    from django.contrib.contenttypes.models import ContentType
    from django.db import IntegrityError, transaction

    encoder = EncoderModel.objects.create(name="m", fingerprint="a" * 64, dimension=4)
    content_type = ContentType.objects.get_for_model(Product)
    Embedding.objects.create(content_type=content_type, object_pk="1", encoder=encoder)
    with pytest.raises(IntegrityError), transaction.atomic():
        Embedding.objects.create(content_type=content_type, object_pk="1", encoder=encoder)


def test_only_one_active_encoder():
    from django.db import IntegrityError, transaction

    EncoderModel.objects.create(name="a", fingerprint="a" * 64, dimension=4, is_active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        EncoderModel.objects.create(name="b", fingerprint="b" * 64, dimension=4, is_active=True)


def test_the_fused_statement_reads_the_vector_leg_from_the_hnsw_index():
    from django.contrib.contenttypes.models import ContentType

    from clip_search.query import parse

    encoder = EncoderModel.objects.create(name="ViT-B-32", pretrained="test", fingerprint="f" * 64,
                                          dimension=512, is_active=True)
    vectors = _fill(encoder, 3000)
    sql.ensure_vector_index(encoder.pk, encoder.dimension)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE clip_search_imageembedding")
    query = sql.FusedQuery(
        scope=sql.Scope(content_type_id=ContentType.objects.get_for_model(Product).pk, encoder_id=encoder.pk),
        dimension=512, vector=vectors[42].tolist(), text="red mug", terms=parse("red mug"),
        boosted_tokens=["red mug"], phrase_tokens=["red", "mug"], vector_statuses=["indexed"],
        text_statuses=["indexed"],
        depth={"vector": 50, "fulltext": 50, "keyword": 50}, images_per_object=1,
        weights={"vector": 1, "fulltext": 1, "keyword": 1},
        rrf_k=60, exact_boost=1.0, text_search_config="english", limit=10)
    statement, params = sql.fused_statement(query)
    # At 3,000 rows a sort can cost less than the index walk, so the planner may pick either.
    # What this guards is the statement's shape: with sorting and sequential scans priced out,
    # the index must be usable (operator, dimension cast and partial-index predicate all match).
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + statement, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert sql.vector_index_name(encoder.pk) in plan, plan
    hits = sql.fused_search(query).hits
    assert hits[0].object_pk == "42" and hits[0].vector_rank == 1


def test_deleting_an_encoder_drops_its_index():
    encoder = EncoderModel.objects.create(name="m", fingerprint="c" * 64, dimension=8)
    sql.ensure_vector_index(encoder.pk, encoder.dimension)
    name = sql.vector_index_name(encoder.pk)
    encoder.delete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s", [name])
        assert cursor.fetchone() is None


@pytest.mark.django_db(transaction=True)  # a real transaction to end, not the test's savepoint
def test_search_settings_last_for_the_transaction_only():
    def current() -> tuple:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan'),"
                           " current_setting('pg_trgm.word_similarity_threshold'), current_setting('jit')")
            return cursor.fetchone()

    with connection.cursor() as cursor:  # a new connection: load the extensions these settings belong to
        cursor.execute("SELECT '[1]'::vector, similarity('a', 'b')")
    before = current()
    with transaction.atomic():
        sql.set_local_search_params(ef_search=321, iterative_scan="relaxed_order", trigram_threshold=0.45)
        assert current() == ("321", "relaxed_order", "0.45", "off")
    assert current() == before != ("321", "relaxed_order", "0.45", "off")
