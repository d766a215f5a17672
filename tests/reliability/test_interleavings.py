"""Random interleavings of shop saves, slow tasks, reindexes and staff decisions (hypothesis).

A task here is the worker's own code cut at its seams: ``indexing.plan`` and ``embed`` when
it starts (what a slow decode stretches out), ``write`` whenever the interleaving says so;
a forced reindex plans every product at once. Saves go through the ORM with the real signal
processor (its tasks published to this test's own Redis queue, which nobody consumes: the
state machine decides when work runs). After every step:

- the storefront shows no product whose current images are not all scored and passed or
  approved (the rows the vector leg and the text legs read);
- a product's status and its image rows' copies of it agree.

At the end every product is drained (its task run until nothing differs), and each ends with
the vectors of its current images and the status their verdicts give.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import redis
from django.core.files.base import ContentFile
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from clip_search import moderation, rows
from clip_search.conf import clip_settings
from clip_search.encoders import ImageEncoder
from clip_search.indexing import embed, plan, register_encoder, write
from clip_search.models import Embedding, EncoderModel, ImageEmbedding, ReviewItem
from clip_search.registry import registry
from clip_search.verify import compare
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Brand, Category, Product, ProductImage
from tests.broker import SHARED_REDIS, port_open, producer, unique_queue
from tests.catalog import add_image, create_product
from tests.conftest import require

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status
CLEARED = (ImageEmbedding.Verdict.PASSED, ImageEmbedding.Verdict.APPROVED)
SHOWN = (Status.INDEXED, Status.NO_IMAGE)


class Interleavings(RuleBasedStateMachine):
    pictures = None  # set by the test: tests/pictures.Pictures
    clip = None

    @initialize()
    def catalog(self) -> None:
        for model in (Embedding, EncoderModel, ProductImage, Product, Brand, Category):
            model.objects.all().delete()
        self.registration = registry.get(Product)
        self.encoder = register_encoder()
        self.products = [create_product(spec, image=self.pictures.safe[i])
                         for i, spec in enumerate(generate_catalog(2, seed=91))]
        self.in_flight: list = []
        self.uploads = 0
        self.drain()

    # ----------------------------------------------------------------- the shop

    def picture(self, knife: bool, index: int) -> bytes:
        pool = self.pictures.knife if knife else self.pictures.safe
        return pool[index % len(pool)]

    @rule(which=st.integers(0, 1), knife=st.booleans(), index=st.integers(0, 7))
    def upload_main_image(self, which, knife, index):
        self.uploads += 1
        product = Product.objects.get(pk=self.products[which].pk)
        product.image.save(f"main{self.uploads}.png", ContentFile(self.picture(knife, index)), save=True)

    @rule(which=st.integers(0, 1), knife=st.booleans(), index=st.integers(0, 7))
    def add_gallery_image(self, which, knife, index):
        self.uploads += 1
        add_image(self.products[which], self.picture(knife, index), order=self.uploads,
                  name=f"gallery{self.uploads}.png")

    @rule(which=st.integers(0, 1))
    def remove_a_gallery_image(self, which):
        image = ProductImage.objects.filter(product=self.products[which]).first()
        if image is not None:
            image.delete()

    @rule(which=st.integers(0, 1), word=st.sampled_from(["crimson", "rucksack", "enamel", "vintage"]))
    def edit_text(self, which, word):
        product = Product.objects.get(pk=self.products[which].pk)
        product.title = f"{word} {product.title}"[:200]
        product.save()

    # ----------------------------------------------------------------- workers and staff

    @rule(which=st.integers(0, 1))
    def a_task_starts(self, which):
        """A worker reads the product and embeds its images; it writes later (or never first)."""
        self.in_flight.extend(self.start([self.products[which].pk]))

    @rule(force=st.booleans())
    def a_reindex_starts(self, force):
        self.in_flight.extend(self.start([p.pk for p in self.products], force=force))

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 20))
    def a_task_writes(self, index):
        write(self.registration, self.encoder, self.in_flight.pop(index % len(self.in_flight)))

    @rule(index=st.integers(0, 5), approve=st.booleans())
    def staff_decide(self, index, approve):
        items = list(ReviewItem.objects.filter(status=ReviewItem.Status.OPEN).order_by("pk"))
        if items:
            try:
                (moderation.approve if approve else moderation.reject)(items[index % len(items)])
            except moderation.DecisionRefused:
                pass

    def start(self, pks, force: bool = False) -> list:
        plans = plan(self.registration, self.registration.fetch(pks), self.encoder, force=force)
        embed(plans, self.encoder)
        return plans

    # ----------------------------------------------------------------- what must always hold

    @invariant()
    def the_storefront_shows_only_scored_and_cleared_images(self):
        for product in self.registration.fetch([p.pk for p in self.products]):
            row = Embedding.objects.filter(object_pk=str(product.pk), encoder=self.encoder).first()
            if row is None:
                continue
            images = {image.name: image for image in row.images.all()}
            assert {image.product_status for image in images.values()} <= {row.status}, row
            shown_to_vector_leg = any(image.product_status == Status.INDEXED for image in images.values())
            if row.status in SHOWN or shown_to_vector_leg:
                for source in self.registration.source_images(product):
                    image = images.get(source.identity)
                    assert image is not None and image.verdict in CLEARED, (row.status, source, images)

    def drain(self) -> None:
        for _ in range(6):
            drift = compare(self.registration, self.registration.fetch([p.pk for p in self.products]))
            pending = [pk for pk, found in drift.items() if found]
            if not pending:
                return
            for planned in self.start(pending):
                write(self.registration, self.encoder, planned)
        raise AssertionError(f"not converged: {drift}")

    def teardown(self) -> None:
        if not hasattr(self, "products"):
            return
        self.drain()
        encoder = ImageEncoder(self.clip)
        for product in self.registration.fetch([p.pk for p in self.products]):
            row = Embedding.objects.get(object_pk=str(product.pk), encoder=self.encoder)
            sources = self.registration.source_images(product)
            images = list(row.images.order_by("position"))
            assert [image.name for image in images] == [source.identity for source in sources]
            expected = encoder.encode_bytes([source.read() for source in sources])
            for image, result in zip(images, expected, strict=True):
                if image.position >= clip_settings.MAX_IMAGES:  # moderated, not searched
                    assert image.vector is None and image.verdict != ImageEmbedding.Verdict.ERROR
                else:
                    assert float(np.dot(np.asarray(image.vector, np.float32), result.vector)) > 0.9999
            assert row.status == rows.derive_status([image.verdict for image in images])
            flagged = {image.pk for image in images if image.verdict == ImageEmbedding.Verdict.FLAGGED}
            open_items = set(row.review_items.filter(status=ReviewItem.Status.OPEN)
                             .values_list("image", flat=True))
            assert flagged <= open_items


def test_random_interleavings_never_show_an_unscored_image(settings, pictures, demo_clip, tmp_path):
    """Deterministic in the suite (the same 25 interleavings every run); ``INTERLEAVINGS=200
    INTERLEAVINGS_RANDOM=1`` explores more, and new ones each run."""
    require(port_open(*SHARED_REDIS), "no Redis on 127.0.0.1:6379")
    settings.MEDIA_ROOT = tmp_path / "media"
    name = unique_queue()
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "QUEUE": name}
    Interleavings.pictures, Interleavings.clip = pictures, demo_clip
    run = Interleavings.TestCase
    run.settings = hypothesis_settings(
        max_examples=int(os.environ.get("INTERLEAVINGS", 25)), stateful_step_count=14, deadline=None,
        derandomize=not os.environ.get("INTERLEAVINGS_RANDOM"), database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    try:
        with producer("redis://127.0.0.1:6379/0"):
            run("runTest").runTest()
    finally:
        redis.Redis.from_url("redis://127.0.0.1:6379/0").delete(name)
