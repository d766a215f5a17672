"""Several images per product in rows of a related table (the demo's ``ProductImage`` gallery,
shaped like Oscar's): a vector per image, search through any of them, moderation of each,
quarantine of the whole product, and saves of the related rows noticed by their watchers.

The pipeline runs inline here (tests/test_catalog_worker.py runs it in real workers); what a
save enqueues is read from this test's own queue on the real Redis (the ``published`` fixture).
"""

import numpy as np
import pytest
from django.core.files.base import ContentFile

from clip_search import moderation
from clip_search.encoders import ImageEncoder
from clip_search.indexing import embed_objects, register_encoder
from clip_search.models import Embedding, EncoderModel, ImageEmbedding, ReviewItem
from clip_search.registry import registry
from clip_search.search import search
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Brand, Product, ProductImage
from tests.catalog import add_image, create_product, vector_of

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status
REDIS_URL = "redis://127.0.0.1:6379/0"


def embed(*products, force=False):
    registration = registry.get(Product)
    return embed_objects(registration, registration.fetch([p.pk for p in products]), register_encoder(),
                         force=force)


def product_with(pictures: list[bytes], seed: int = 1) -> Product:
    """A product whose main picture is the first and whose gallery holds the others."""
    product = create_product(generate_catalog(1, seed=seed)[0], image=pictures[0])
    for order, data in enumerate(pictures[1:]):
        add_image(product, data, order, name=f"g{order}.png")
    return product


def found(results) -> list[int]:
    return [p.pk for p in results]


def test_every_image_has_its_vector_and_image_search_finds_the_product_through_any(
        published, pictures, demo_clip):
    products = [product_with(pictures.safe[3 * i:3 * i + 3], seed=i) for i in range(2)]
    embed(*products)
    expected = ImageEncoder(demo_clip).encode_bytes(pictures.safe[:6])
    for product in products:
        row = product.clip_embedding
        assert row.status == Status.INDEXED
        images = list(row.images.order_by("position"))
        names = [product.image.name, *(g.image.name for g in product.gallery.all())]
        assert [image.name for image in images] == names and [i.position for i in images] == [0, 1, 2]
        assert all(image.vector is not None and image.verdict == "passed" for image in images)
    assert EncoderModel.objects.get(is_active=True).max_images == 3
    first, second = products
    for position, data in enumerate(pictures.safe[3:6]):  # each of the second product's pictures
        results = search(Product.objects.all(), image=data, weights={"fulltext": 0, "keyword": 0})
        assert found(results)[0] == second.pk, position
        assert len(found(results)) == len(set(found(results))) == 2  # one hit per product
    assert np.dot(vector_of(second, 1), expected[4].vector) == pytest.approx(1.0, abs=1e-4)
    # More like this starts from the first picture: the hit's distance is that image's.
    like = search(Product.objects.all(), like=first, weights={"fulltext": 0, "keyword": 0})
    distance = like.search_info.hits[str(second.pk)].vector_distance
    nearest = min(1 - float(np.dot(vector_of(first, 0), vector_of(second, p))) for p in range(3))
    assert distance == pytest.approx(nearest, abs=1e-4)


def test_a_flagged_second_image_quarantines_the_product_until_staff_approve(published, pictures):
    product = product_with([pictures.safe[0], pictures.knife[0]])
    assert embed(product).counts["flagged"] == 1
    row = product.clip_embedding
    assert row.status == Status.FLAGGED
    knife = row.images.get(position=1)
    assert knife.verdict == "flagged" and row.images.get(position=0).verdict == "passed"
    item = ReviewItem.objects.get(embedding=row, status=ReviewItem.Status.OPEN)
    assert (item.image, item.image_name) == (knife, product.gallery.get().image.name)
    assert product.pk not in found(search(Product.objects.all(), text=product.sku))
    assert product.pk not in found(search(Product.objects.all(), image=pictures.knife[0]))

    moderation.approve(item, note="a cake knife")
    assert product.clip_embedding.status == Status.INDEXED
    assert found(search(Product.objects.all(), text=product.sku))[:1] == [product.pk]
    assert embed(product, force=True).counts["indexed"] == 1  # re-embedded, the decision stays
    assert row.images.get(position=1).verdict == "approved"
    assert not ReviewItem.objects.filter(status=ReviewItem.Status.OPEN).exists()


def test_a_change_to_one_image_re_embeds_only_that_image(published, pictures):
    product = product_with(pictures.safe[:3])
    embed(product)
    before = {i.position: (i.pk, i.embedded_at, i.sha256) for i in product.clip_embedding.images.all()}

    second, third = product.gallery.all()
    second.image.save("replaced.png", ContentFile(pictures.safe[3]), save=True)  # replace one
    embed(product)
    after = {i.position: (i.pk, i.embedded_at, i.sha256) for i in product.clip_embedding.images.all()}
    assert after[0] == before[0] and after[2] == before[2]  # untouched: same row, not re-embedded
    assert after[1][0] != before[1][0] and after[1][2] != before[1][2]

    third.delete()  # remove one
    embed(product)
    assert {i.position: i.pk for i in product.clip_embedding.images.all()} == {0: after[0][0], 1: after[1][0]}

    ProductImage.objects.filter(pk=second.pk).update(display_order=9)  # reorder: last in the gallery
    add_image(product, pictures.safe[4], order=5, name="added.png")  # add one, before it
    summary = embed(product)
    images = list(product.clip_embedding.images.order_by("position"))
    assert [images[0].pk, images[2].pk] == [after[0][0], after[1][0]]  # moved, not re-embedded
    assert images[1].pk not in {pk for pk, _, _ in [*before.values(), *after.values()]}
    assert images[2].embedded_at == after[1][1] and summary.counts["indexed"] == 1
    assert embed(product).counts["skipped"] == 1  # nothing changed since


def test_saves_of_gallery_rows_enqueue_their_product_and_hide_a_new_image(published, pictures):
    product = product_with(pictures.safe[:2])
    assert published.pks() == [str(product.pk)] * 2  # the product's save, then its gallery row's
    embed(product)
    gallery = product.gallery.get()

    gallery.caption = "seen from the side"
    gallery.save()  # nothing clip_search reads changed
    gallery.save(update_fields=["caption"])
    assert len(published.pks()) == 2
    assert product.clip_embedding.status == Status.INDEXED

    gallery.image.save("other.png", ContentFile(pictures.knife[0]), save=True)  # a new picture
    assert len(published.pks()) == 3 and published.pks()[-1] == str(product.pk)
    # Hidden in the same transaction as the save: never searchable with an unscored image.
    assert product.clip_embedding.status == Status.PENDING
    assert set(ImageEmbedding.objects.filter(object_pk=str(product.pk)).values_list(
        "product_status", flat=True)) == {Status.PENDING}
    assert product.pk not in found(search(Product.objects.all(), text=product.sku))
    embed(product)
    assert product.clip_embedding.status == Status.FLAGGED

    gallery.delete()  # a removed picture: re-embedded, not hidden (what is left was scored)
    assert len(published.pks()) == 4
    assert product.clip_embedding.status == Status.FLAGGED
    embed(product)
    assert product.clip_embedding.status == Status.INDEXED
    assert ReviewItem.objects.get().status == ReviewItem.Status.SUPERSEDED

    product.brand.name = "Renamed Brand"  # text from a related row: its products are queued
    product.brand.save()
    assert published.pks()[-1] == str(product.pk)
    embed(product)
    assert "renamed brand" in product.clip_embedding.keywords
    assert Brand.objects.count() == 1


def test_images_past_max_images_are_moderated_but_not_searched(published, pictures, settings):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "MAX_IMAGES": 1}
    product = product_with([pictures.safe[0], pictures.knife[1]])
    embed(product)
    row = product.clip_embedding
    second = row.images.get(position=1)
    assert second.vector is None and second.verdict == "flagged" and row.status == Status.FLAGGED
    assert row.images.get(position=0).vector is not None
