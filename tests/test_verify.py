"""The verify pass: what no signal reports is found by comparing the shop's tables with the
index, in pk-keyed batches (``clip_reindex --verify``, and the sweep one slice at a time)."""


import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import connection

import clip_search
from clip_search.bulk import reindex_inline
from clip_search.indexing import register_encoder
from clip_search.models import Embedding, VerifyCursor
from clip_search.registry import registry
from clip_search.search import search
from clip_search.tasks import sweep
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product, ProductImage
from tests.catalog import add_image, create_product, imported, signals_off

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def sweep_settings(settings):
    """A sweep verifies 5 objects per run and requeues a pending row at once."""
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "SWEEP": {"VERIFY_PER_RUN": 5, "PENDING_AFTER": 0}}


def embedded(n: int, seed: int = 40, **options) -> list[Product]:
    products = imported(generate_catalog(n, seed=seed))
    reindex_inline(registry.get(Product), register_encoder(), missing_only=True, batch_size=8)
    return products


def verify_command(capsys) -> str:
    call_command("clip_reindex", "--verify", "--batch-size", "4")
    return capsys.readouterr().out


def test_changes_no_signal_reports_are_found_and_redone_by_verify(published, pictures, capsys):
    products = embedded(6)
    renamed, gallery, dropped, overwritten, deleted, untouched = products
    with signals_off():
        add_image(dropped, pictures.safe[0])
    reindex_inline(registry.get(Product), register_encoder(), missing_only=False, batch_size=8)
    Product.objects.filter(pk=renamed.pk).update(title="Crimson rucksack")  # no signal
    # A picture added by bulk_create (no signal), an image row deleted behind the ORM's back,
    # a file overwritten under the same name (object storage with file_overwrite does this).
    ProductImage.objects.bulk_create([ProductImage(product=gallery, image="gallery/bulk.png")])
    gallery.image.storage.save("gallery/bulk.png", ContentFile(pictures.knife[0]))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM catalog_productimage WHERE product_id = %s", [dropped.pk])
    with open(overwritten.image.path, "wb") as handle:
        handle.write(pictures.knife[1])
    with connection.cursor() as cursor:  # deleted by raw SQL: its rows are orphans
        cursor.execute("DELETE FROM catalog_product WHERE id = %s", [deleted.pk])
    assert published.pks() == []  # none of it was signalled

    out = verify_command(capsys)
    assert "catalog.product: verified 5, 4 differed from the index (2 with an unscored image" in out
    assert "1 rows of deleted objects removed" in out
    assert Product.objects.get(pk=renamed.pk).clip_embedding.status == Status.INDEXED
    assert renamed.pk in [p.pk for p in search(Product.objects.all(), text="crimson rucksack")][:1]
    assert gallery.clip_embedding.status == Status.FLAGGED  # the bulk-created knife was scored
    assert dropped.clip_embedding.images.count() == 1
    assert overwritten.clip_embedding.status == Status.FLAGGED
    assert not Embedding.objects.filter(object_pk=str(deleted.pk)).exists()
    assert untouched.clip_embedding.status in (Status.INDEXED, Status.FLAGGED)
    assert "verified 5, 0 differed" in verify_command(capsys)  # converged after one pass


def test_the_sweep_verifies_a_slice_per_run_and_resumes_where_it_stopped(published):
    products = embedded(12, seed=41)
    Product.objects.filter(pk__in=[products[2].pk, products[11].pk]).update(description="Changed.")
    assert sweep() == 1  # the first 5: one of them changed
    cursor = VerifyCursor.objects.get()
    assert (cursor.last_pk, cursor.passes) == (str(products[4].pk), 0)
    assert sweep() == 0 and VerifyCursor.objects.get().last_pk == str(products[9].pk)
    assert sweep() == 1  # the last 2, and the pass is complete
    cursor = VerifyCursor.objects.get()
    assert (cursor.last_pk, cursor.passes) == ("", 1)
    assert published.pks() == [str(products[2].pk), str(products[11].pk)]


def test_the_sweep_requeues_pending_rows_whose_message_was_lost(published):
    products = embedded(3, seed=42)
    Embedding.objects.filter(object_pk=str(products[1].pk)).update(status=Status.PENDING)
    assert sweep() == 1 and published.pks() == [str(products[1].pk)]


def test_clip_search_reindex_queues_objects_and_querysets_after_commit(published):
    products = embedded(3, seed=43)
    assert clip_search.reindex(products[0]) == 1
    assert clip_search.reindex(Product.objects.filter(pk__in=[p.pk for p in products[1:]]), force=True) == 2
    assert published.pks() == [str(products[0].pk), str(products[1].pk), str(products[2].pk)]
    with pytest.raises(clip_search.RegistrationError):
        clip_search.reindex(products[0].brand)


def test_a_product_saved_before_its_image_row_converges(published, pictures):
    """Oscar's dashboard without ATOMIC_REQUESTS: the product commits, its task runs, and the
    image row commits afterwards. The gallery row's own save re-queues the product."""
    product = create_product(generate_catalog(1, seed=44)[0], image=b"")
    reindex_inline(registry.get(Product), register_encoder(), missing_only=True, batch_size=8)
    assert product.clip_embedding.status == Status.NO_IMAGE
    add_image(product, pictures.safe[1])
    assert published.pks() == [str(product.pk), str(product.pk)]
    reindex_inline(registry.get(Product), register_encoder(), missing_only=False, batch_size=8)
    assert product.clip_embedding.status == Status.INDEXED
