"""What a save enqueues (counted on a real Redis queue) and what it hides until scored."""

import pytest
from django.core.files.base import ContentFile

from clip_search.indexing import embed_objects, iter_objects, register_encoder
from clip_search.models import Embedding
from clip_search.registry import registry
from clip_search.search import search
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.broker import producer
from tests.catalog import create_product

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status
REDIS_URL = "redis://127.0.0.1:6379/0"


def embed(product):
    registration = registry.get(Product)
    embed_objects(registration, iter_objects(registration, [product.pk]), register_encoder())


def test_saves_enqueue_only_when_the_image_or_searchable_text_changed(published, settings):
    # Moderation off: whether the model likes this picture is not what is tested here.
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "MODERATION": {
        **settings.CLIP_SEARCH["MODERATION"], "ENABLED": False}}
    register_encoder()
    product = create_product(generate_catalog(1, seed=31)[0])
    assert published.count() == 1
    embed(product)
    product.save()  # nothing searchable changed
    product.price += 1
    product.save()  # price is not registered
    product.save(update_fields=["in_stock"])
    assert published.count() == 1
    product.title += " deluxe"
    product.save()
    assert published.count() == 2
    assert product.clip_embedding.status == Status.INDEXED  # same image: still searchable


def test_a_new_image_is_hidden_until_the_worker_has_scored_it(published):
    register_encoder()
    spec, other = generate_catalog(2, seed=32)
    product = create_product(spec)
    embed(product)
    assert [p.pk for p in search(Product.objects.all(), text=spec.sku)][:1] == [product.pk]
    product.image.save("new.png", ContentFile(other.png_bytes(64)), save=True)
    assert product.clip_embedding.status == Status.PENDING
    assert product.pk not in [p.pk for p in search(Product.objects.all(), text=spec.sku)]
    embed(product)  # what the worker does with the queued task
    row = product.clip_embedding
    assert row.status in (Status.INDEXED, Status.FLAGGED) and row.images.get().name == product.image.name
    assert published.count() == 2


def test_deleting_a_product_removes_its_rows(published):
    register_encoder()
    product = create_product(generate_catalog(1, seed=33)[0])
    embed(product)
    pk = product.pk
    product.delete()
    assert not Embedding.objects.filter(object_pk=str(pk)).exists()


def test_a_forced_re_embed_while_the_broker_is_down_is_not_skipped_later(settings, tmp_path, demo_model_dir):
    from clip_search.tasks import enqueue

    settings.MEDIA_ROOT = tmp_path / "media"
    register_encoder()
    product = create_product(generate_catalog(1, seed=34)[0])
    embed(product)
    with producer("redis://127.0.0.1:1/0"):  # nothing listens on port 1: a dead broker
        assert enqueue("catalog.product", [str(product.pk)], force=True) is False
    row = product.clip_embedding
    assert row.stale and row.reembed  # the sweep's plain task will re-embed it
