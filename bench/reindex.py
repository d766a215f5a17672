"""Reindex throughput: ``clip_reindex`` inline and ``--async`` on 2 workers vs model-only vs naive.

    cd /work/main && PYTHONPATH=. .venv/bin/python bench/reindex.py [--products 256] [--images 1]
        [--model demo|vit-b-32]

Same images, same run, in a throwaway test database on the embedded PostgreSQL:
- naive: one product at a time — Pillow decode, stock ``preprocess``, ``encode_image`` of a
  batch of one, one ORM write (what a first version would do);
- model only: the already preprocessed tensors through the image tower, batch 32 (the ceiling);
- ``clip_reindex --force --no-calibrate`` inline, the pipeline (``clip_search.streaming``):
  the next batch read and decoded while the model embeds this one and the last one is
  written in one transaction of a fixed number of statements; then the same with
  ``PREFETCH_BATCHES`` 0 (the steps in turn, the same batch write). The lexicon and
  calibration that end a reindex are timed apart: a fixed cost per run, not per image;
- a profile of the steps-in-turn run: wall and CPU per image of each step (plan: rows and
  files read, hashed; embed: decode threads, the model, moderation; write), PostgreSQL's own
  CPU included, and from it the share of model-only throughput two cores allow at best;
- ``clip_reindex --async --force`` with 2 Celery worker processes (1 torch thread each) on the
  Redis at 127.0.0.1:6379, or skipped when there is none.
Images: photo-like JPEGs, 1000–2000 px (``_util.product_jpegs``), as shops upload them;
``--images N`` gives each product N of them (its main picture and N - 1 gallery rows, the
shape of Oscar's ``ProductImage``). Rates are images per second, then products per second.
``--model vit-b-32`` uses the real ViT-B-32 architecture with random weights (speed does not
depend on the values); ``demo`` the project's small trained model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402


def configure(model: str) -> None:
    if model == "vit-b-32":
        os.environ["CLIP_SEARCH_MODEL"], os.environ["CLIP_SEARCH_PRETRAINED"] = "ViT-B-32", "random"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_demo.settings")
    import django

    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=256)
    parser.add_argument("--images", type=int, default=1, help="images per product (1 main + gallery rows)")
    parser.add_argument("--model", choices=["demo", "vit-b-32"], default="demo")
    args = parser.parse_args()
    configure(args.model)
    import logging
    import shutil
    import tempfile

    logging.getLogger("clip_search").setLevel(logging.WARNING)
    from django.test.utils import setup_databases, teardown_databases

    media = Path(tempfile.mkdtemp(prefix="clip-bench-media-"))
    from django.conf import settings

    settings.MEDIA_ROOT = media
    databases = setup_databases(verbosity=0, interactive=False)
    try:
        run(args, media)
    finally:
        teardown_databases(databases, verbosity=0)
        shutil.rmtree(media, ignore_errors=True)


def run(args: argparse.Namespace, media: Path) -> None:
    import torch
    from django.conf import settings
    from django.core.files.base import ContentFile
    from django.core.management import call_command
    from django.test import override_settings
    from PIL import Image

    from clip_search.bulk import finish
    from clip_search.indexing import pipeline_for, register_encoder
    from clip_search.models import Embedding, ImageEmbedding
    from clip_search.registry import registry
    from clip_search.signals import disconnect_registration
    from shop_demo.catalog.generator import generate_catalog
    from shop_demo.catalog.loading import create_product
    from shop_demo.catalog.models import Product, ProductImage

    print(f"# reindex throughput, {args.products} products × {args.images} images, model {args.model}; "
          f"{_util.machine()}")
    if args.model == "demo" and "CLIP_SEARCH_MODEL" not in os.environ:
        from clip_search.training import train
        from shop_demo.catalog.training import demo_training_args

        train(demo_training_args(), log=lambda line: None)  # cached after the first time
    per = args.images
    blobs = _util.product_jpegs(args.products * per, seed=5)
    registration = registry.get(Product)
    disconnect_registration(registration)  # an import: no signals, reindex does the work
    products = []
    for i, spec in enumerate(generate_catalog(args.products, seed=5)):
        product = create_product(spec, image=b"")
        product.image.save(f"{spec.sku}.jpg", ContentFile(blobs[i * per]), save=True)
        for order in range(1, per):
            gallery = ProductImage(product=product, display_order=order)
            gallery.image.save(f"{spec.sku}-{order}.jpg", ContentFile(blobs[i * per + order]), save=True)
        products.append(product)
    count = len(blobs)
    encoder = register_encoder()
    pipeline = pipeline_for(encoder)
    clip = pipeline.images.clip
    size = sum(map(len, blobs)) / count / 1024
    print(f"catalog: {len(products)} products, {count} JPEGs, {size:.0f} kB avg; "
          f"image encoder backend={pipeline.images.backend} quantized={pipeline.images.quantized}")

    figures: dict[str, float] = {}

    # Naive: one image at a time, stock preprocessing, one write each.
    started = time.perf_counter()
    with torch.inference_mode():
        for product in products:
            row, _ = Embedding.objects.update_or_create(
                content_type_id=_content_type(Product), object_pk=str(product.pk), encoder=encoder,
                defaults={"status": Embedding.Status.INDEXED})
            for position, source in enumerate(registration.source_images(product)):
                image = Image.open(io.BytesIO(source.read())).convert("RGB")
                vector = clip.model.encode_image(clip.preprocess(image).unsqueeze(0))
                vector = torch.nn.functional.normalize(vector, dim=-1)[0].numpy()
                ImageEmbedding.objects.update_or_create(embedding=row, position=position, defaults={
                    "vector": vector.tolist(), "verdict": "passed", "name": source.identity,
                    "encoder": encoder,
                    "content_type_id": row.content_type_id, "object_pk": row.object_pk,
                    "product_status": row.status})
    figures["naive loop (1 at a time)"] = count / (time.perf_counter() - started)
    Embedding.objects.all().delete()

    # Model only: preprocessed tensors, batch 32, the same encoder the pipeline uses.
    images = pipeline.images
    tensors = [images.preprocess([images.decode(blob)]) for blob in blobs]
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(tensors), images.batch_size):
        images.encode_tensor(torch.cat(tensors[start:start + images.batch_size]))
    figures["model only (batch 32)"] = count / (time.perf_counter() - started)
    model_cpu = time.process_time() - cpu

    shop = getattr(settings, "CLIP_SEARCH", {})
    for name, prefetch in (("clip_reindex inline, pipelined", 1), ("clip_reindex inline, steps in turn", 0)):
        options = {**shop.get("IMAGE_ENCODER", {}), "PREFETCH_BATCHES": prefetch}
        with override_settings(CLIP_SEARCH={**shop, "IMAGE_ENCODER": options}):
            with profiled() if prefetch == 0 else contextlib.nullcontext() as profile:
                started = time.perf_counter()
                call_command("clip_reindex", "--force", "--no-calibrate", stdout=io.StringIO(),
                             stderr=io.StringIO())
                figures[name] = count / (time.perf_counter() - started)
        assert Embedding.objects.filter(status__in=["indexed", "flagged"]).count() == len(products)
        assert ImageEmbedding.objects.exclude(vector=None).count() == count
    started = time.perf_counter()
    finish([registration], encoder)
    finish_s = time.perf_counter() - started

    started = time.perf_counter()
    call_command("clip_reindex", "--verify", stdout=io.StringIO(), stderr=io.StringIO())
    verify = count / (time.perf_counter() - started)

    asynchronous = _async_with_two_workers(products, media)
    if asynchronous:
        figures["clip_reindex --async, 2 workers"] = count * asynchronous / len(products)

    base = figures["naive loop (1 at a time)"]
    model = figures["model only (batch 32)"]
    print("\n| path | images/s | products/s | × naive | % of model-only |\n|---|---:|---:|---:|---:|")
    for name, rate in figures.items():
        print(f"| {name} | {rate:.2f} | {rate / per:.2f} | {rate / base:.2f} | {100 * rate / model:.0f} % |")
    print(f"\nThe lexicon and calibration that end the reindex: {finish_s:.1f} s, once per run.")
    print(f"`clip_reindex --verify` over the indexed catalog (nothing differs): {verify:.0f} images/s, "
          f"{verify / per:.0f} products/s")
    print_profile(profile, count, model_cpu, model)


def postgres_cpu() -> float:
    """CPU seconds used so far by the embedded server's processes (postmaster and backends)."""
    import psutil

    from shop_demo.embedded_db import DATA_DIR

    try:
        pid = int((DATA_DIR / "pgdata" / "postmaster.pid").read_text().split()[0])
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except (OSError, ValueError, psutil.Error):
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


@contextlib.contextmanager
def profiled():
    """Wall, process CPU and server CPU of each step of ``clip_search.streaming`` (run with
    PREFETCH_BATCHES 0, so the steps do not overlap and each one's CPU is its own)."""
    from clip_search import streaming

    profile: dict[str, list[float]] = {}
    originals = {name: getattr(streaming, name) for name in ("plan", "embed", "write_plans")}

    def timed(name, function):
        def call(*args, **kwargs):
            wall, cpu, server = time.perf_counter(), time.process_time(), postgres_cpu()
            try:
                return function(*args, **kwargs)
            finally:
                spent = profile.setdefault(name, [0.0, 0.0, 0.0])
                spent[0] += time.perf_counter() - wall
                spent[1] += time.process_time() - cpu
                spent[2] += postgres_cpu() - server
        return call

    for name, function in originals.items():
        setattr(streaming, name, timed(name, function))
    try:
        yield profile
    finally:
        for name, function in originals.items():
            setattr(streaming, name, function)


def print_profile(profile: dict[str, list[float]], count: int, model_cpu: float, model_rate: float) -> None:
    labels = {"plan": "plan: product rows, files read and hashed",
              "embed": "embed: decode threads, the model, moderation",
              "write_plans": "write: the batch's transaction"}
    print("\nProfile of the steps-in-turn run, per image (this process's CPU counts every thread; "
          "PostgreSQL's is its server processes'):\n")
    print("| step | wall ms | CPU ms (this process) | CPU ms (PostgreSQL) |\n|---|---:|---:|---:|")
    total_cpu = 0.0
    for name, (wall, cpu, server) in profile.items():
        total_cpu += cpu + server
        print(f"| {labels[name]} | {1000 * wall / count:.1f} | {1000 * cpu / count:.1f} | "
              f"{1000 * server / count:.1f} |")
    model_ms = 1000 * model_cpu / count
    print(f"| of which the model alone (the model-only run) | {1000 / model_rate:.1f} | {model_ms:.1f} | |")
    other = 1000 * total_cpu / count - model_ms
    ceiling = model_ms / (model_ms + other)
    print(f"\nCPU per image besides the model: {other:.1f} ms. With the model keeping both cores busy "
          f"(model-only: {model_ms:.1f} CPU ms in {1000 / model_rate:.1f} ms wall) and every other "
          f"step overlapped perfectly, two cores allow at most {100 * ceiling:.0f} % of model-only "
          f"throughput.")


def _content_type(model) -> int:
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.get_for_model(model).pk


def _async_with_two_workers(products, media: Path) -> float | None:
    import subprocess

    from clip_search.models import Embedding
    from tests.broker import SHARED_REDIS, Worker, port_open, process_env, unique_queue

    if not port_open(*SHARED_REDIS):
        print("(no Redis on 127.0.0.1:6379: --async skipped)")
        return None
    import tempfile

    broker, queue = "redis://127.0.0.1:6379/0", unique_queue()
    logs = Path(tempfile.mkdtemp(prefix="clip-bench-workers-"))
    env = {"OMP_NUM_THREADS": "1", "CLIP_SEARCH_MODEL": os.environ.get("CLIP_SEARCH_MODEL", ""),
           "CLIP_SEARCH_PRETRAINED": os.environ.get("CLIP_SEARCH_PRETRAINED", "")}
    env = {k: v for k, v in env.items() if v}
    workers = [Worker(logs / f"w{i}.log", broker_url=broker, queue=queue, media_root=media, **env).start()
               for i in range(2)]
    try:
        Embedding.objects.all().delete()
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "manage.py", "clip_reindex", "--async", "--force", "--timeout", "900"],
            cwd=ROOT, env=process_env(broker_url=broker, queue=queue, media_root=media, **env),
            capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            print(f"--async failed:\n{result.stdout}\n{result.stderr[-2000:]}")
            return None
        print(result.stdout.strip().splitlines()[-1])
        return len(products) / elapsed
    finally:
        for worker in workers:
            worker.stop()


if __name__ == "__main__":
    main()
