"""The reindex pipeline (clip_search.streaming), the batch write and the image encoder's device
and precision: real database, the project's model, the demo catalog's pictures."""

import logging
import threading

import numpy as np
import pytest
import torch
from django.core.checks import run_checks
from django.db import connection
from django.test.utils import CaptureQueriesContext

from clip_search import bulk, indexing, streaming
from clip_search.encoders import ImageEncoder, image_encoder_for
from clip_search.indexing import embed, plan, register_encoder, write_many
from clip_search.models import Embedding, ImageEmbedding
from clip_search.registry import registry
from shop_demo.catalog.models import Product
from tests.catalog import add_image, create_catalog

pytestmark = pytest.mark.django_db

Status = Embedding.Status


@pytest.fixture
def registration(media):
    return registry.get(Product)


@pytest.fixture
def configure(settings):
    """Set keys of CLIP_SEARCH (nested ones merged), the test settings' model kept."""
    shop = settings.CLIP_SEARCH

    def configure(**values) -> None:
        settings.CLIP_SEARCH = {**shop, **{key: {**shop.get(key, {}), **value} if isinstance(value, dict)
                                           else value for key, value in values.items()}}
    return configure


def vectors(products) -> dict:
    return {p.pk: np.asarray(ImageEmbedding.objects.get(object_pk=str(p.pk), position=0).vector)
            for p in products}


def test_a_batch_is_written_in_the_same_statements_whatever_its_size(registration, configure):
    configure(MODERATION={"ENABLED": False})  # review items are per image
    products = create_catalog(13)
    add_image(products[5], products[6].image.open("rb").read())  # a product with two images
    encoder = register_encoder()
    encoder.max_images = 8  # as if raised before (a write raises it once, in one more statement)
    encoder.save(update_fields=["max_images"])

    def statements(batch) -> int:
        plans = plan(registration, registration.fetch([p.pk for p in batch]), encoder)
        embed(plans, encoder)
        with CaptureQueriesContext(connection) as captured:
            outcomes = write_many(registration, encoder, plans)
        assert outcomes == [Status.INDEXED] * len(batch)
        return len(captured)

    one, twelve = statements(products[:1]), statements(products[1:])
    assert twelve == one, "a statement per object crept back into the batch write"
    assert Embedding.objects.filter(status=Status.INDEXED).count() == 13
    assert ImageEmbedding.objects.filter(object_pk=str(products[5].pk)).count() == 2
    # Written again with nothing new (vectors reused): still the same statements, no vector rewritten.
    before = {row.pk: row.vector for row in ImageEmbedding.objects.all()}
    products[3].title = "Renamed for the document"
    products[3].save()
    assert statements(products[1:]) == twelve
    assert Embedding.objects.get(object_pk=str(products[3].pk)).keywords.startswith(products[3].sku.lower())
    assert all(np.array_equal(before[row.pk], row.vector) for row in ImageEmbedding.objects.all())


def test_a_batch_write_drops_only_the_objects_that_changed_meanwhile(registration):
    products = create_catalog(4)
    encoder = register_encoder()
    plans = plan(registration, registration.fetch([p.pk for p in products]), encoder)
    embed(plans, encoder)
    add_image(products[1], products[2].image.open("rb").read())  # changed after it was read
    Product.objects.filter(pk=products[3].pk).delete()
    outcomes = dict(zip([planned.pk for planned in plans], write_many(registration, encoder, plans),
                        strict=True))
    outcomes = [outcomes[str(product.pk)] for product in products]
    assert outcomes[1] == "stale" and outcomes[3] == "gone"
    assert {outcomes[0], outcomes[2]} <= {Status.INDEXED, Status.FLAGGED}
    assert not ImageEmbedding.objects.filter(object_pk=str(products[1].pk)).exists()
    assert not Embedding.objects.filter(object_pk=str(products[3].pk)).exists()


def spy(monkeypatch, events: list) -> None:
    """Record, in order, when each batch is planned (main thread), embedded (which thread) and
    written; the real functions run."""
    def recorded(name, function, key):
        def call(*args, **kwargs):
            events.append((name, key(*args), threading.current_thread().name))
            return function(*args, **kwargs)
        return call

    first = lambda plans: min(int(p.pk) for p in plans)  # noqa: E731 (the batch's first product)
    monkeypatch.setattr(streaming, "plan", recorded(
        "plan", plan, lambda r, objects, e: min(o.pk for o in objects)))
    monkeypatch.setattr(streaming, "embed", recorded("embed", embed, lambda plans, *a: first(plans)))
    monkeypatch.setattr(streaming, "write_plans", recorded(
        "write", indexing.write_plans, lambda r, e, plans: first(plans)))


@pytest.mark.parametrize("prefetch", [0, 1])
def test_the_next_batch_is_read_and_decoded_while_this_one_is_embedded(registration, configure, monkeypatch,
                                                                        prefetch):
    configure(IMAGE_ENCODER={"PREFETCH_BATCHES": prefetch})
    products = create_catalog(9)
    events: list = []
    spy(monkeypatch, events)
    summary = bulk.reindex_inline(registration, register_encoder(), missing_only=True, batch_size=4)
    assert sum(summary.counts.values()) == 9 and not summary.errors
    keys = sorted(p.pk for p in products)[::4]  # each batch's first pk
    order = [(name, key) for name, key, _ in events]
    assert {thread for name, _, thread in events if name == "embed"} == {"clip-model_0"}
    assert {thread for name, _, thread in events if name != "embed"} == {threading.main_thread().name}
    if prefetch:  # batch 2 is planned (its images read, their decoding started) before batch 1 is written
        assert order.index(("plan", keys[1])) < order.index(("write", keys[0]))
        assert order.index(("plan", keys[2])) < order.index(("write", keys[1]))
    else:
        assert order == [(step, key) for key in keys for step in ("plan", "embed", "write")]


def test_the_pipeline_writes_what_one_batch_at_a_time_writes(registration, configure):
    products = create_catalog(10)
    encoder = register_encoder()
    configure(IMAGE_ENCODER={"PREFETCH_BATCHES": 0})
    bulk.reindex_inline(registration, encoder, missing_only=False, batch_size=3, force=True)
    one_by_one = vectors(products)
    statuses = dict(Embedding.objects.values_list("object_pk", "status"))
    configure(IMAGE_ENCODER={"PREFETCH_BATCHES": 2})
    bulk.reindex_inline(registration, encoder, missing_only=False, batch_size=3, force=True)
    assert dict(Embedding.objects.values_list("object_pk", "status")) == statuses
    for pk, vector in vectors(products).items():
        assert np.array_equal(vector, one_by_one[pk])


def test_a_model_failure_in_its_thread_stops_the_reindex_and_writes_nothing_of_its_batch(
        registration, monkeypatch):
    create_catalog(6)
    encoder = register_encoder()
    calls = []

    def fail_on_second_batch(plans, encoder, loading=None):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return embed(plans, encoder, loading)

    monkeypatch.setattr(streaming, "embed", fail_on_second_batch)
    with pytest.raises(RuntimeError, match="out of memory"):
        bulk.reindex_inline(registration, encoder, missing_only=True, batch_size=3)
    assert Embedding.objects.exclude(status=Status.PENDING).count() == 3  # the first batch only


def test_decode_threads_come_from_the_configure(demo_clip, configure, pictures):
    configure(IMAGE_ENCODER={"DECODE_THREADS": 3})
    encoder = image_encoder_for(demo_clip)
    assert encoder.decode_threads == 3
    loading = encoder.start(pictures.safe[:4])
    assert encoder._pool._max_workers == 3
    started = encoder.finish(loading)
    direct = encoder.encode_bytes(pictures.safe[:4])
    assert all(np.array_equal(a.vector, b.vector) for a, b in zip(started, direct, strict=True))


# --------------------------------------------------------------------------- device and precision


def cosines(a, b) -> np.ndarray:
    return np.sum(np.stack([r.vector for r in a]) * np.stack([r.vector for r in b]), axis=1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_vectors_agree_with_fp32(demo_clip, pictures, precision):
    blobs = pictures.safe[:8]
    exact = ImageEncoder(demo_clip).encode_bytes(blobs)
    low = ImageEncoder(demo_clip, precision=precision).encode_bytes(blobs)
    agreement = cosines(exact, low)
    assert agreement.min() >= 0.999, agreement
    assert not all(np.array_equal(a.vector, b.vector) for a, b in zip(exact, low, strict=True)), \
        "autocast did not run: the vectors are bit-identical"


def test_a_low_precision_worker_registers_the_same_encoder(configure):
    fp32 = register_encoder()
    configure(IMAGE_ENCODER={"PRECISION": "bf16"})
    assert register_encoder().pk == fp32.pk
    assert indexing.pipeline_for(fp32).images.precision == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without CUDA")
def test_a_gpu_worker_without_a_gpu_embeds_on_the_cpu_and_says_so(demo_clip, pictures, configure, caplog):
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.image"):
        encoder = ImageEncoder(demo_clip, device="cuda", precision="fp16")
    assert encoder.device.type == "cpu" and "not available" in caplog.text
    assert encoder.encode_bytes(pictures.safe[:2])[0].vector.shape == (demo_clip.dimension,)
    configure(IMAGE_ENCODER={"DEVICE": "cuda"})
    assert "clip_search.W005" in [message.id for message in run_checks()]
    configure()
    assert "clip_search.W005" not in [message.id for message in run_checks()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the GPU path "
                    "runs where one is present (the CPU fallback is tested above)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_gpu_worker_agrees_with_the_cpu(demo_clip, pictures, precision):
    blobs = pictures.safe[:16]
    cpu = ImageEncoder(demo_clip).encode_bytes(blobs)
    gpu_encoder = ImageEncoder(demo_clip, device="cuda", precision=precision)
    assert gpu_encoder.device.type == "cuda"
    assert next(demo_clip.model.visual.parameters()).device.type == "cpu"  # the loaded model stays
    assert cosines(cpu, gpu_encoder.encode_bytes(blobs)).min() >= 0.999


def test_the_batch_write_stores_the_document_the_orm_path_builds(registration):
    """``sql.writes`` builds the full-text document in SQL; ``indexing.document_fields`` (the
    other writers: tags, hides) with ``SearchVector`` expressions: the two must store the same."""
    products = create_catalog(6)
    Product.objects.filter(pk=products[2].pk).update(description="")  # an empty part is left out
    Product.objects.filter(pk=products[3].pk).update(description="the and of")  # stop words only
    bulk.reindex_inline(registration, register_encoder(), missing_only=True, batch_size=6)
    for product in Product.objects.all():
        fields = indexing.document_fields(registration, product)
        stored = Embedding.objects.filter(object_pk=str(product.pk)).annotate(
            expected_document=fields["search_document"], expected_words=fields["words"]).values(
            "search_document", "expected_document", "words", "expected_words", "keywords", "keyword_tokens",
            "suggestions").get()
        assert stored["search_document"] == stored["expected_document"] != ""
        assert stored["words"] == stored["expected_words"]
        assert (stored["keywords"], stored["keyword_tokens"], stored["suggestions"]) == (
            fields["keywords"], fields["keyword_tokens"], fields["suggestions"])
