"""Faults under real workers (``celery worker`` subprocesses on Redis) and a real database.

Already covered elsewhere, and not repeated here: a save with the broker down marks the row
stale and the sweep recovers it (test_broker), a worker killed mid-``clip_reindex`` followed by
a rerun (test_broker), search degrading when the model directory is deleted (test_api,
test_search, test_admin).

To stop a worker *inside* a task at a known point, a product's image file is a named pipe: the
worker's read blocks on it, after the task has read its batch from the database and before it
writes any row, until the test writes the picture into the pipe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from clip_search import encoders
from clip_search.bulk import reindex_inline
from clip_search.indexing import register_encoder
from clip_search.models import Embedding, EncoderModel, ReviewItem
from clip_search.registry import registry
from clip_search.tasks import enqueue, sweep
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.broker import RedisServer, producer, wait_for
from tests.catalog import create_product, imported
from tests.conftest import require
from tests.reliability.conftest import storefront_products
from tests.test_broker import DONE, finished

Status = Embedding.Status
LABEL = "catalog.product"

broker = pytest.mark.broker
# A 5 s visibility timeout, looked at every second (tests/reliability/worker_settings.py).
QUICK_REDELIVERY = {"DJANGO_SETTINGS_MODULE": "tests.reliability.worker_settings",
                    "CELERY_VISIBILITY_TIMEOUT": "5"}
transactional = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def blocking_image(product: Product) -> Iterator[callable]:
    """Turn the product's image file into a named pipe. Yields ``wait_for_reader()``, which
    returns once a worker blocks reading it; on exit the picture is written into the pipe (the
    blocked read completes) and the file is a plain file again."""
    path = Path(product.image.path)
    data = path.read_bytes()
    path.unlink()
    os.mkfifo(path)
    writer: list[int] = []

    def opened() -> bool:
        try:  # a non-blocking open for writing succeeds only while a reader has the pipe open
            writer.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
            return False

    def wait_for_reader(what: str) -> None:
        wait_for(opened, 180, what, interval=0.05)

    try:
        yield wait_for_reader
    finally:
        path.unlink()
        path.write_bytes(data)  # a plain file again, for any later read (a retry, a redelivery)
        for fd in writer:
            os.set_blocking(fd, True)
            with contextlib.suppress(BrokenPipeError):  # the reader may be gone (killed)
                os.write(fd, data)
            os.close(fd)


def task_ids(log: str, event: str) -> set[str]:
    return set(re.findall(rf"Task clip_search\.embed_batch\[([0-9a-f-]+)\] {event}", log))


def assert_one_complete_row_per_product(products: list[Product]) -> None:
    """Nothing lost, nothing doubled, nothing half-written."""
    rows = Embedding.objects.filter(object_pk__in=[str(p.pk) for p in products])
    assert rows.count() == len(products) == len({row.object_pk for row in rows})
    for row in rows:
        assert row.status in (Status.INDEXED, Status.FLAGGED), (row.object_pk, row.status, row.error)
        assert row.images.get().vector is not None and row.search_document and row.keywords and not row.stale
        assert ReviewItem.objects.filter(embedding=row).count() == (row.status == Status.FLAGGED)


@broker
@transactional
def test_products_saved_while_the_broker_is_down_are_all_embedded_after_it_comes_back(tmp_path, start_worker):
    """The running worker outlives the outage; a broken upload in the mix does not stop it."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(tmp_path).start()
    try:
        with producer(server.url):
            register_encoder()
            worker = start_worker(server.url)
            specs = generate_catalog(8, seed=61)
            before = [create_product(spec) for spec in specs[:3]]
            wait_for(finished(3), 120, f"embedding before the outage\n{worker.log()}")

            server.stop()
            during = [create_product(spec) for spec in specs[3:7]]
            broken = create_product(specs[7], image=b"<html>not a picture</html>")
            during.append(broken)
            products = before + during
            assert Product.objects.filter(pk__in=[p.pk for p in products]).count() == len(products)
            for product in during:
                row = Embedding.objects.get(object_pk=str(product.pk))
                assert row.status == Status.PENDING and row.stale and "Could not queue" in row.error

            server.start()  # the same port: the broker is back, empty
            assert sweep() == len(during)
            wait_for(finished(len(products)), 180, f"embedding after the sweep\n{worker.log()}")
        assert worker.process.poll() is None, worker.log()  # the same worker, reconnected
        row = Embedding.objects.get(object_pk=str(broken.pk))
        assert row.status == Status.ERROR and row.error.startswith("image 1: not_an_image: ")
        assert_one_complete_row_per_product([p for p in products if p != broken])
    finally:
        server.stop()


@broker
@transactional
def test_a_worker_killed_inside_a_batch_gets_it_redelivered_and_one_row_per_product(redis_url, start_worker):
    """kill -9 while the worker holds a batch: acks_late leaves it unacknowledged, and after the
    visibility timeout a new worker gets the same task (same id) without any rerun."""
    products = imported(generate_catalog(12, seed=62))
    batches = [products[:4], products[4:8], products[8:]]
    with producer(redis_url):
        encoder = register_encoder()
        for batch in batches:
            assert enqueue(LABEL, [str(p.pk) for p in batch], encoder.pk)
        with blocking_image(batches[1][2]) as wait_for_reader:
            first = start_worker(redis_url, **QUICK_REDELIVERY)
            wait_for_reader(f"the worker inside the second batch\n{first.log()}")
            first.kill()  # SIGKILL to its process group, mid-task
        log = first.log()
        in_flight = task_ids(log, "received") - task_ids(log, "succeeded")
        assert len(in_flight) == 1, log
        done_by_first = Embedding.objects.filter(status__in=DONE).count()
        assert done_by_first == len(batches[0]), log  # the first batch only; nothing of the second

        second = start_worker(redis_url, **QUICK_REDELIVERY)
        wait_for(finished(len(products)), 180, f"redelivery\n{second.log()}")
    assert in_flight <= task_ids(second.log(), "succeeded"), second.log()  # the same task, redelivered
    assert_one_complete_row_per_product(products)


def worker_backends() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return [pid for (pid,) in cursor.fetchall()]


@broker
@transactional
def test_a_database_connection_dropped_inside_a_task_is_retried_and_nothing_is_half_written(
        redis_url, start_worker):
    products = imported(generate_catalog(4, seed=63))
    with producer(redis_url):
        encoder = register_encoder()
        assert enqueue(LABEL, [str(p.pk) for p in products], encoder.pk)
        with blocking_image(products[1]) as wait_for_reader:
            others = set(worker_backends())  # this process's other threads (a live server's)
            worker = start_worker(redis_url)
            wait_for_reader(f"the worker inside its task\n{worker.log()}")
            [pid] = set(worker_backends()) - others  # the worker's, open since it read the batch
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert not Embedding.objects.exists()
        # The picture arrives; the task's first write fails on the dead connection.
        wait_for(lambda: "Retry in" in worker.log(), 60, f"the retry\n{worker.log()}")
        assert not Embedding.objects.exists()  # the failed attempt wrote nothing
        wait_for(finished(len(products)), 120, f"the retried task\n{worker.log()}")
    log = worker.log()
    assert re.search(r"Retry in \d+s: OperationalError", log), log
    assert worker.process.poll() is None and pid not in worker_backends()
    assert_one_complete_row_per_product(products)


# --------------------------------------------------------------------------- model files


@pytest.fixture
def small_catalog(media, db) -> list[tuple]:
    """Eight drawn products, embedded inline in this test's transaction."""
    specs = generate_catalog(8, seed=64)
    products = imported(specs)
    summary = reindex_inline(registry.get(Product), register_encoder(), missing_only=True, batch_size=8)
    assert not summary.errors
    return list(zip(specs, products, strict=True))


@pytest.fixture
def corrupt_model(tmp_path, demo_model_dir) -> Path:
    """A copy of the model whose weights file is garbage of the same size."""
    folder = tmp_path / "corrupt-model"
    shutil.copytree(demo_model_dir, folder)
    weights = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth")]
    assert weights, list(folder.iterdir())
    for path in weights:
        path.write_bytes(os.urandom(path.stat().st_size))
    return folder


@pytest.fixture
def active_encoder_at(small_catalog, db):
    """Point the active encoder's row at other model files, as if they changed on disk."""
    encoder = EncoderModel.objects.get(is_active=True)

    def point(folder: Path) -> None:
        EncoderModel.objects.filter(pk=encoder.pk).update(name=f"local-dir:{folder}")
        encoders.reset()

    yield point
    encoders.reset()


def test_a_corrupt_model_file_degrades_search_to_keywords_and_says_so(small_catalog, active_encoder_at,
                                                                      corrupt_model):
    active_encoder_at(corrupt_model)
    product = storefront_products(small_catalog)[0]
    response = APIClient().get("/api/v1/search/", {"q": product.sku})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["results"][0]["sku"] == product.sku
    assert "vector" in body["degraded"] and body["legs"] == ["fulltext", "keyword"]


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_model_files_are_a_system_check_error(damage, corrupt_model, tmp_path, db):
    folder = tmp_path / "gone" if damage == "missing" else corrupt_model
    with override_settings(CLIP_SEARCH={"MODEL": f"local-dir:{folder}", "PRETRAINED": ""}):
        errors = [m for m in run_checks(tags=["clip_search"]) if m.is_serious()]
    assert errors and any(str(folder) in m.msg for m in errors), errors
