"""Upgrading keeps an indexed catalog: migration 0005 moves each product's one vector to its
first image row with the verdict it had, links the review items, and builds the HNSW index
on the image table, so search works on the old rows and nothing is re-embedded."""

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from clip_search import sql
from clip_search.models import Embedding, ImageEmbedding, ReviewItem
from shop_demo.catalog.models import Product

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("clip_search", "0004_keywords_gin")]
AFTER = [("clip_search", "0005_images_and_typed_keys")]


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


@pytest.fixture(autouse=True)
def latest_schema_afterwards():
    """The tests after these need every migration applied again."""
    yield
    executor = MigrationExecutor(connection)
    migrate(executor.loader.graph.leaf_nodes())


def legacy_row(cursor, encoder: int, content_type: int, pk: int, status: str, vector: str) -> int:
    cursor.execute(
        "INSERT INTO clip_search_embedding (content_type_id, object_pk, encoder_id, vector, image_sha256, "
        "image_name, status, moderation_scores, error, attempts, stale, keywords, keyword_tokens, "
        "source_digest, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '', 0, false, '', "
        "'{}', 'old', now(), now()) RETURNING id",
        [content_type, str(pk), encoder, vector, f"sha{pk}", f"products/{pk}.png", status,
         '{"weapons": 0.9}' if status != "indexed" else "{}"])
    return cursor.fetchone()[0]


def review(cursor, embedding: int, pk: int, status: str) -> int:
    cursor.execute(
        "INSERT INTO clip_search_reviewitem (embedding_id, image_sha256, reason, categories, scores, status, "
        "created_at) VALUES (%s, %s, 'flagged', '[\"weapons\"]', '{}', %s, now()) RETURNING id",
        [embedding, f"sha{pk}", status])
    return cursor.fetchone()[0]


def test_upgrading_keeps_vectors_verdicts_reviews_and_builds_the_index():
    content_type = ContentType.objects.get_for_model(Product).pk
    migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO clip_search_encodermodel (name, pretrained, fingerprint, dimension, "
                           "is_active, created_at) VALUES ('m', '', 'f', 3, true, now()) RETURNING id")
            encoder = cursor.fetchone()[0]
            indexed = legacy_row(cursor, encoder, content_type, 1, "indexed", "[1,0,0]")
            approved = legacy_row(cursor, encoder, content_type, 2, "indexed", "[0,1,0]")
            flagged = legacy_row(cursor, encoder, content_type, 3, "flagged", "[0,0,1]")
            rejected = legacy_row(cursor, encoder, content_type, 4, "rejected", "[0.6,0.8,0]")
            items = {pk: review(cursor, row, pk, status) for pk, row, status in (
                (2, approved, "approved"), (3, flagged, "open"), (4, rejected, "rejected"))}
    finally:
        migrate(AFTER)

    images = {image.object_pk: image for image in ImageEmbedding.objects.all()}
    assert {pk: image.verdict for pk, image in images.items()} == {
        "1": "passed", "2": "approved", "3": "flagged", "4": "rejected"}
    assert images["1"].embedding_id == indexed and images["1"].position == 0
    assert (images["1"].name, images["1"].sha256, images["1"].size) == ("products/1.png", "sha1", None)
    assert [round(float(v), 3) for v in images["4"].vector] == [0.6, 0.8, 0.0]
    assert images["3"].moderation_scores == {"weapons": 0.9} and images["3"].product_status == "flagged"
    assert Embedding.objects.filter(pk=indexed).values_list("object_id", flat=True).get() == 1
    for pk, item in items.items():
        review_item = ReviewItem.objects.get(pk=item)
        assert review_item.image == images[str(pk)] and review_item.image_name == f"products/{pk}.png"
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_indexes WHERE indexname = %s",
                       [sql.vector_index_name(images["1"].encoder_id)])
        assert cursor.fetchone() == ("clip_search_imageembedding",)
