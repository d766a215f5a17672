"""Embed-on-save through a real broker (Redis) and real worker processes."""

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from clip_search.encoders import ImageEncoder, TextEncoder
from clip_search.indexing import register_encoder
from clip_search.models import Embedding, ReviewItem
from clip_search.moderation import Moderator
from clip_search.tasks import sweep
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.broker import (
    ROOT,
    RedisServer,
    process_env,
    producer,
    wait_for,
)
from tests.catalog import create_product, imported, vector_of
from tests.conftest import require

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status
DONE = [Status.INDEXED, Status.FLAGGED, Status.ERROR, Status.NO_IMAGE]


def finished(count: int):
    return lambda: Embedding.objects.filter(status__in=DONE, stale=False).count() >= count


def test_saved_products_are_embedded_by_a_worker(redis_url, start_worker, demo_clip):
    specs = generate_catalog(20, seed=21)  # one block of 20 holds exactly one knife
    with producer(redis_url):
        register_encoder()
        worker = start_worker(redis_url)
        products = [create_product(spec) for spec in specs]  # each save queues its own task
        wait_for(finished(20), 120, f"embedding\n{worker.log()}")

    expected = ImageEncoder(demo_clip).encode_bytes([p.image.open("rb").read() for p in products])
    # The worker's verdict is the model's, whatever it is (how good the model is at knives is
    # test_demo_model.py's business); the knife must be among the flagged for this test to
    # see the quarantine path.
    verdicts = Moderator(TextEncoder(demo_clip), demo_clip.logit_scale).judge(
        np.stack([result.vector for result in expected]))
    for product, result, verdict in zip(products, expected, verdicts, strict=True):
        row = product.clip_embedding
        assert float(np.dot(vector_of(product), result.vector)) == pytest.approx(1.0, abs=1e-4)
        assert row.status == (Status.FLAGGED if verdict.is_flagged else Status.INDEXED), product.title
    knife = next(p for spec, p in zip(specs, products, strict=True) if spec.is_unsafe)
    assert knife.clip_embedding.status == Status.FLAGGED
    assert ReviewItem.objects.get(embedding=knife.clip_embedding).status == ReviewItem.Status.OPEN
    assert not Embedding.objects.searchable().filter(object_pk=str(knife.pk)).exists()
    assert Embedding.objects.count() == 20  # one row per product, however often it was queued


def test_a_dead_broker_does_not_fail_the_save_and_the_sweep_recovers(tmp_path, start_worker, media):
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    broker = RedisServer(tmp_path).start()
    try:
        with producer(broker.url):
            register_encoder()
            broker.stop()  # the broker goes away between page load and save
            product = create_product(generate_catalog(1, seed=3)[0])
            assert Product.objects.filter(pk=product.pk).exists()
            row = product.clip_embedding
            assert row.status == Status.PENDING and row.stale
            assert "Could not queue the embed task" in row.error

            broker.start()  # same port: the broker is back
            assert sweep() == 1
            worker = start_worker(broker.url)
            wait_for(finished(1), 120, f"embedding after the sweep\n{worker.log()}")
        row = Embedding.objects.get(pk=row.pk)
        assert row.status == Status.INDEXED and vector_of(product) is not None and not row.error
    finally:
        broker.stop()


def reindex_command(queue: str, media, broker_url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "clip_reindex", "--async", *args], cwd=ROOT,
        env=process_env(broker_url=broker_url, queue=queue, media_root=media),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_killed_mid_reindex_then_a_rerun_leaves_one_row_per_product(
        redis_url, start_worker, queue, media):
    products = imported(generate_catalog(120, seed=8))
    register_encoder()
    # A short visibility timeout, so the killed worker's unacknowledged batch comes back soon.
    first = start_worker(redis_url, CELERY_VISIBILITY_TIMEOUT="5")
    command = reindex_command(queue, media, redis_url, "--batch-size", "2")
    wait_for(lambda: Embedding.objects.filter(status__in=DONE).count() >= 10, 120,
             f"first batches\n{first.log()}", interval=0.02)
    first.kill(signal.SIGKILL)
    command.kill()  # the operator's run dies with it
    command.wait(30)
    killed_at = Embedding.objects.filter(status__in=DONE).count()
    assert killed_at < len(products), "the worker finished before it was killed; kill it sooner"

    second = start_worker(redis_url, CELERY_VISIBILITY_TIMEOUT="5")
    rerun = reindex_command(queue, media, redis_url, "--batch-size", "16", "--timeout", "180")
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, f"{out}\n{err}\n{second.log()}"
    assert "catalog.product: 120 to do" in out and "failed 0" in out
    assert "obj/s" in err or "it/s" in err  # the progress bar, with its rate

    assert Embedding.objects.count() == len(products)
    assert Embedding.objects.filter(status__in=[Status.INDEXED, Status.FLAGGED]).count() == len(products)
    # Everything the killed run queued is consumed or acknowledged: nothing left behind.
    wait_for(lambda: _queue_length(redis_url, queue) == 0, 30, "queue drained")


def _queue_length(redis_url: str, queue: str) -> int:
    import redis

    return redis.Redis.from_url(redis_url).llen(queue)
