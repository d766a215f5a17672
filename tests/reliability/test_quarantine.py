"""A quarantine that cannot be bypassed: one test per case found by trying it adversarially,
with real ``celery worker`` processes on Redis, real PostgreSQL locks and the demo model.

Permissions, the database outage and oversized forms are tests/test_api.py's and
tests/reliability/test_api_faults.py's; the random interleavings are test_interleavings.py's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import redis
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import connection, connections
from rest_framework.test import APIClient

from clip_search import moderation
from clip_search.indexing import register_encoder
from clip_search.models import Embedding, ReviewItem
from clip_search.registry import registry
from clip_search.search import search
from clip_search.tasks import sweep
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.broker import ROOT, RedisServer, process_env, producer, wait_for
from tests.catalog import imported
from tests.conftest import require
from tests.reliability.test_faults import blocking_image, task_ids

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status


def embed_now(*products) -> None:
    from clip_search.indexing import embed_objects

    registration = registry.get(Product)
    embed_objects(registration, registration.fetch([p.pk for p in products]), register_encoder())


def new_image(product: Product, data: bytes, name: str) -> None:
    """What the shop's admin does: upload a picture and save the product."""
    product.image.save(name, ContentFile(data), save=True)


def holds(product: Product) -> bool:
    """The row is written from the product's current image (by storage name)."""
    row = Embedding.objects.get(object_pk=str(product.pk))
    product.refresh_from_db()
    names = list(row.images.values_list("name", flat=True))
    return row.status != Status.PENDING and names == [product.image.name]


def storefront(product: Product) -> bool:
    return product.pk in [p.pk for p in search(registry.get(Product).get_queryset(), text=product.sku)]


def idle(workers, queue_name: str, url: str) -> bool:
    """Every task any worker received has finished and the queue is empty."""
    if redis.Redis.from_url(url).llen(queue_name):
        return False
    return all(task_ids(w.log_path.read_text(), "received") <= task_ids(w.log_path.read_text(), "succeeded")
               for w in workers)


def test_a_slow_older_image_never_overwrites_a_newer_one_and_a_knife_stays_quarantined(
        redis_url, start_worker, queue, pictures):
    """5 new images 0.15 s apart, the 2nd slow to decode, 2 workers: the row ends on the 5th
    (a knife: flagged, its review open), never on the 2nd."""
    product = imported(generate_catalog(1, seed=71))[0]
    with producer(redis_url):
        embed_now(product)
        workers = [start_worker(redis_url), start_worker(redis_url)]
        images = [*pictures.safe[1:5], pictures.knife[0]]
        new_image(product, images[0], "first.png")
        wait_for(lambda: holds(product), 60, "the first new image")
        new_image(product, images[1], "second.png")
        with blocking_image(product) as wait_for_reader:
            wait_for_reader("a worker reading the second image")
            for number, data in enumerate(images[2:], start=3):
                time.sleep(0.15)
                new_image(product, data, f"image{number}.png")
            wait_for(lambda: holds(product), 60, "the fifth image, by the other worker")
        # The second image's task now finishes: its result is older than the product and dropped.
        wait_for(lambda: idle(workers, queue, redis_url), 60, "the slow task")
        assert any("'superseded': 1" in w.log() for w in workers), [w.log() for w in workers]
    assert holds(product)
    row = Embedding.objects.get(object_pk=str(product.pk))
    assert row.status == Status.FLAGGED
    item = ReviewItem.objects.get(embedding=row, status=ReviewItem.Status.OPEN)
    assert item.image_name == product.image.name and not storefront(product)


def test_a_forced_reindex_keeps_staff_decisions_and_never_writes_an_older_image(
        redis_url, start_worker, queue, pictures):
    knives = imported(generate_catalog(2, seed=72))
    for product, data in zip(knives, pictures.knife, strict=False):
        product.image.save(f"knife{product.pk}.png", ContentFile(data), save=False)
        Product.objects.filter(pk=product.pk).update(image=product.image.name)
    others = imported(generate_catalog(4, seed=73))
    with producer(redis_url):
        embed_now(*knives, *others)
        approved, rejected = (ReviewItem.objects.get(embedding__object_pk=str(p.pk)) for p in knives)
        moderation.approve(approved)
        moderation.reject(rejected)
        worker = start_worker(redis_url)

        done = threading.Event()

        def reindex() -> None:
            try:
                call_command("clip_reindex", "--force", "--batch-size", "10")
            finally:
                connections.close_all()
                done.set()

        with blocking_image(others[0]) as wait_for_reader:
            thread = threading.Thread(target=reindex)
            thread.start()
            wait_for_reader("the reindex reading its batch")
            # Meanwhile the shop uploads new pictures and the worker embeds them.
            for product, data in zip(others[1:], pictures.safe[5:], strict=False):
                new_image(product, data, f"new{product.pk}.png")
            wait_for(lambda: all(holds(p) for p in others[1:]), 60, f"the worker\n{worker.log()}")
        thread.join(120)
        assert done.is_set()
        wait_for(lambda: idle([worker], queue, redis_url), 60, "the requeued tasks")
    assert all(holds(p) for p in others)  # the reindex's older pictures were dropped
    statuses = {p.pk: Embedding.objects.get(object_pk=str(p.pk)).status for p in knives}
    assert statuses == {knives[0].pk: Status.INDEXED, knives[1].pk: Status.REJECTED}
    assert not ReviewItem.objects.filter(status=ReviewItem.Status.OPEN).exists()
    assert storefront(knives[0]) and not storefront(knives[1])


def test_approving_while_a_new_image_waits_leaves_the_product_hidden_until_it_is_scored(
        redis_url, start_worker, queue, pictures):
    product = imported(generate_catalog(1, seed=74))[0]
    product.image.save("knife.png", ContentFile(pictures.knife[0]), save=False)
    Product.objects.filter(pk=product.pk).update(image=product.image.name)
    with producer(redis_url):
        embed_now(product)
        item = ReviewItem.objects.get(status=ReviewItem.Status.OPEN)
        new_image(product, pictures.knife[1], "another-knife.png")  # queued: no worker yet
        assert Embedding.objects.get(object_pk=str(product.pk)).status == Status.PENDING
        api = APIClient()
        api.force_authenticate(get_user_model().objects.create_superuser("boss", "b@example.com", "pw"))
        response = api.post(f"/api/v1/review/{item.pk}/approve/", {"note": "the old one was fine"})
        assert response.status_code == 200, response.content
        assert Embedding.objects.get(object_pk=str(product.pk)).status == Status.PENDING
        assert not storefront(product)  # the new, unscored knife is not on sale
        worker = start_worker(redis_url)
        wait_for(lambda: holds(product), 60, f"the new image\n{worker.log()}")
    row = Embedding.objects.get(object_pk=str(product.pk))
    assert row.status == Status.FLAGGED and not storefront(product)
    new_item = ReviewItem.objects.get(status=ReviewItem.Status.OPEN)
    assert new_item.image_name == product.image.name
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.APPROVED  # decided on the old image, which is gone
    response = api.post(f"/api/v1/review/{item.pk}/approve/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "already_decided"


def test_a_decision_takes_the_product_row_lock_before_the_review_item(media, pictures):
    """The worker's lock order (product row, then review item) holds for decisions too: while
    another transaction holds the product row, a decision waits without holding the item.
    And when a third party does deadlock with a decision, the decision is retried, not a 500."""
    products = imported(generate_catalog(2, seed=75))
    for product, data in zip(products, pictures.knife, strict=False):
        product.image.save(f"knife{product.pk}.png", ContentFile(data), save=False)
        Product.objects.filter(pk=product.pk).update(image=product.image.name)
    embed_now(*products)
    rows = [Embedding.objects.get(object_pk=str(p.pk)) for p in products]
    (row, item), (other_row, other_item) = [(row, row.review_items.get()) for row in rows]
    with psycopg.connect(_dsn(), autocommit=True) as holder, \
            psycopg.connect(_dsn(), autocommit=True) as prober:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM clip_search_embedding WHERE id = %s FOR UPDATE", [row.pk])
        outcome: list = []
        thread = threading.Thread(target=_in_thread(lambda: moderation.approve(item), outcome))
        thread.start()
        wait_for(lambda: _waiting(prober, "clip_search_embedding"), 10, "the decision waiting")
        prober.execute("BEGIN")  # the decision holds no lock on the item while it waits
        prober.execute("SELECT 1 FROM clip_search_reviewitem WHERE id = %s FOR UPDATE NOWAIT", [item.pk])
        prober.execute("ROLLBACK")
        holder.execute("ROLLBACK")
        thread.join(30)
        assert outcome and not isinstance(outcome[0], Exception), outcome

        # A deadlock: the holder takes the item, the decision the product row, then each wants
        # the other's. The decision (quicker deadlock_timeout) is the one PostgreSQL aborts.
        holder.execute("BEGIN")
        holder.execute("SET LOCAL deadlock_timeout = '10s'")
        holder.execute("SELECT 1 FROM clip_search_reviewitem WHERE id = %s FOR UPDATE", [other_item.pk])
        outcome.clear()
        thread = threading.Thread(target=_in_thread(lambda: moderation.reject(other_item), outcome))
        thread.start()
        wait_for(lambda: _waiting(prober, "clip_search_reviewitem"), 10, "the decision waiting for the item")
        holder.execute("SELECT 1 FROM clip_search_embedding WHERE id = %s FOR UPDATE", [other_row.pk])
        holder.execute("COMMIT")
        thread.join(30)
    assert outcome and not isinstance(outcome[0], Exception), outcome
    item.refresh_from_db()
    other_item.refresh_from_db()
    assert (item.status, other_item.status) == (ReviewItem.Status.APPROVED, ReviewItem.Status.REJECTED)
    assert Embedding.objects.get(pk=row.pk).status == Status.INDEXED
    assert Embedding.objects.get(pk=other_row.pk).status == Status.REJECTED


def _dsn() -> str:
    from tests.broker import database_url

    return database_url()


def _waiting(prober, table: str) -> bool:
    """Some backend waits for a lock in an ORM query of ``table``'s rows (pg_stat_activity keeps a
    query's first 1 kB only: the FROM and FOR UPDATE of a long SELECT may be cut off)."""
    return bool(prober.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
        [f'SELECT "{table}".%']).fetchone()[0])


def _in_thread(function, outcome: list):
    def run() -> None:
        try:
            outcome.append(function())
        except Exception as error:  # reported by the test
            outcome.append(error)
        finally:
            connections.close_all()

    return run


def test_the_sweep_runs_where_the_documented_worker_listens(redis_url, queue, media):
    """A beat entry and ``sweep.delay()`` publish to CLIP_SEARCH["QUEUE"] by themselves, never to
    Celery's default queue, which the documented worker (-Q clip_search) never reads; and the
    README's ``celery call`` (which publishes by name, without loading the task) names it."""
    client = redis.Redis.from_url(redis_url)
    default_before = client.llen("celery")
    env = process_env(broker_url=redis_url, queue=queue, media_root=media)
    call = subprocess.run([sys.executable, "-m", "celery", "-A", "shop_demo", "call", "clip_search.sweep",
                           "--queue", queue], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert call.returncode == 0, call.stderr
    assert client.llen(queue) == 1
    with producer(redis_url):
        sweep.delay()
        from celery.beat import ScheduleEntry, Scheduler

        from shop_demo.celery import app

        entry = ScheduleEntry(name="clip-search-sweep", task="clip_search.sweep", schedule=300, app=app)
        Scheduler(app, lazy=True).apply_async(entry)
    assert client.llen(queue) == 3 and client.llen("celery") == default_before
    client.delete(queue)


def test_messages_lost_in_a_broker_restart_are_recovered_by_the_sweep(tmp_path, start_worker, settings,
                                                                      pictures):
    """Redis restarted without persistence with 15 tasks queued: text edits and new images on
    flagged products included, all of them converge after one sweep."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "SWEEP": {"VERIFY_PER_RUN": 1000, "PENDING_AFTER": 0}}
    server = RedisServer(tmp_path).start()
    try:
        products = imported(generate_catalog(15, seed=76))
        flagged = products[:3]
        for product, data in zip(flagged, pictures.knife * 2, strict=False):
            product.image.save(f"knife{product.pk}.png", ContentFile(data), save=False)
            Product.objects.filter(pk=product.pk).update(image=product.image.name)
        with producer(server.url):
            embed_now(*products)
            assert all(p.clip_embedding.status == Status.FLAGGED for p in flagged)
            for product, data in zip(flagged, pictures.safe, strict=False):  # new images, flagged products
                new_image(product, data, f"clean{product.pk}.png")
            for product in products[3:8]:  # text edits
                product.title = f"Renamed {product.pk}"
                product.save()
            for product, data in zip(products[8:], pictures.safe[3:], strict=False):
                new_image(product, data, f"new{product.pk}.png")
            assert redis.Redis.from_url(server.url).llen(settings.CLIP_SEARCH["QUEUE"]) == 15
            server.stop()
            server.start()  # empty: no persistence
            assert sweep() == 15
            worker = start_worker(server.url)
            wait_for(lambda: all(converged(p) for p in products), 120, f"the sweep's tasks\n{worker.log()}")
        assert all(p.clip_embedding.status == Status.INDEXED for p in flagged)
        assert all("renam" in p.clip_embedding.search_document for p in products[3:8])
    finally:
        server.stop()


def converged(product: Product) -> bool:
    from clip_search.verify import compare

    registration = registry.get(Product)
    drift = compare(registration, registration.fetch([product.pk]), sizes=True)
    return not drift[product.pk]


@pytest.fixture(autouse=True)
def _no_leftover_connections():
    yield
    connection.close()
