"""The embedding pipeline, run inline against the real database and the project's model."""

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from clip_search.encoders import ImageEncoder
from clip_search.indexing import embed_objects, iter_objects, register_encoder
from clip_search.models import Embedding
from clip_search.registry import registry
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import create_catalog, create_product, vector_of

pytestmark = pytest.mark.django_db

Status = Embedding.Status


@pytest.fixture(autouse=True)
def media(tmp_path, settings, demo_model_dir):
    settings.MEDIA_ROOT = tmp_path / "media"


def rows(**filters):
    return Embedding.objects.filter(**filters)


def embed(products, **options):
    registration = registry.get(Product)
    return embed_objects(registration, iter_objects(registration, [p.pk for p in products]),
                         register_encoder(), **options)


def test_products_get_rows_with_the_encoders_vectors(demo_clip):
    products = create_catalog(12)
    summary = embed(products)
    assert sum(summary.counts.values()) == 12 and not summary.errors
    encoder = ImageEncoder(demo_clip)
    expected = encoder.encode_bytes([p.image.open("rb").read() for p in products])
    for product, result in zip(products, expected, strict=True):
        row = product.clip_embedding
        assert row.status in (Status.INDEXED, Status.FLAGGED)
        assert np.dot(vector_of(product), result.vector) == pytest.approx(1.0, abs=1e-4)
        image = row.images.get()
        assert image.name == product.image.name and image.size == product.image.size and image.sha256
        assert row.keywords.startswith(product.sku.lower())
        assert row.keyword_tokens == [product.sku.lower(), product.brand.name.lower()]


def test_running_twice_keeps_one_row_and_skips_unchanged_images():
    products = create_catalog(6)
    embed(products)
    second = embed(products)
    assert second.counts["skipped"] == 6
    assert rows().count() == 6


def test_bad_and_missing_images_are_reported_and_the_product_is_kept():
    specs = generate_catalog(3, seed=5)
    broken = create_product(specs[0], image=b"<html>not an image</html>")
    missing = create_product(specs[1], image=b"")
    gone = create_product(specs[2])
    gone.image.storage.delete(gone.image.name)
    summary = embed([broken, missing, gone])
    assert Product.objects.count() == 3
    assert broken.clip_embedding.status == Status.ERROR
    assert broken.clip_embedding.error.startswith("image 1: not_an_image:")
    assert missing.clip_embedding.status == Status.NO_IMAGE and not missing.clip_embedding.images.exists()
    assert gone.clip_embedding.status == Status.ERROR and "could not be read" in gone.clip_embedding.error
    assert summary.counts["failed"] == 2 and set(summary.errors) == {str(broken.pk), str(gone.pk)}


def test_clip_reindex_inline_summary_and_exit_code(capsys):
    products = create_catalog(10)
    bad = create_product(generate_catalog(11, seed=9)[-1], image=b"GIF89a truncated")
    with pytest.raises(CommandError, match="1 objects failed"):
        call_command("clip_reindex", "--batch-size", "4")
    out = capsys.readouterr()
    assert "catalog.product: 11 to do" in out.out and f"failed catalog.product pk={bad.pk}" in out.out
    assert "obj/s" in out.err or "it/s" in out.err or "obj" in out.err  # the progress bar
    assert rows().count() == 11
    bad.image.save("fixed.png", ContentFile(products[0].image.open("rb").read()), save=True)
    call_command("clip_reindex", "--missing")
    assert rows(status=Status.ERROR).count() == 0 and rows().count() == 11


def test_model_switch_is_refused_until_coverage_is_complete(tmp_path, demo_model_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    from clip_search import bulk
    from clip_search.encoders import EncoderSpec
    from clip_search.training import WEIGHTS_FILE

    create_catalog(5)
    call_command("clip_reindex")
    old = register_encoder()
    assert old.is_active
    # A second model: the demo weights nudged, so another fingerprint.
    shutil.copy(demo_model_dir / "open_clip_config.json", tmp_path)
    state = load_file(str(demo_model_dir / WEIGHTS_FILE))
    state["ln_final.bias"] = state["ln_final.bias"] + 1e-2
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    new = register_encoder(EncoderSpec(f"local-dir:{tmp_path}"))
    assert new.pk != old.pk and not new.is_active
    with pytest.raises(ValueError, match="missing 5 objects"):
        bulk.activate(new, list(registry))
    call_command("clip_reindex", "--model", f"local-dir:{tmp_path}", "--activate")
    new.refresh_from_db()
    old.refresh_from_db()
    assert new.is_active and not old.is_active
    assert rows(encoder=new).count() == rows(encoder=old).count() == 5
