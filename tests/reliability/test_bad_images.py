"""Every kind of bad or odd image through every door: the admin product form, API image search,
the embed task and ``clip_reindex``. Never a 500; the product is kept; its row says why.

How each kind decodes is tested in tests/test_imaging.py; here it is what each door does with
it. The images are drawn in code with Pillow.
"""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from clip_search.indexing import register_encoder
from clip_search.models import Embedding
from clip_search.tasks import embed_batch
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import create_product, signals_off, vector_of
from tests.test_admin import filesystem_broker, queued_tasks
from tests.test_api import assert_error, fresh_throttles, image_search  # noqa: F401 - a fixture
from tests.test_imaging import encode, huge_png

pytestmark = pytest.mark.django_db

Status = Embedding.Status


def truncated(fmt: str) -> bytes:
    picture = Image.new("RGB", (256, 256), (200, 30, 30))
    data = encode(picture.effect_spread(10) if fmt == "PNG" else picture, fmt)
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return encode(Image.new("RGB", (48, 24), (30, 30, 200)), "JPEG", exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 250, 200, 0] + [0, 0, 0] * 254)
    return encode(palette, "PNG", transparency=0)


# kind: (file name, bytes, the decode error code; None = a fine image that gets a vector)
KINDS: dict[str, tuple[str, bytes, str | None]] = {
    "zero-bytes": ("empty.jpg", b"", "empty"),
    "text-as-jpg": ("notes.jpg", b"just some text renamed to .jpg\n" * 4, "not_an_image"),
    "html": ("page.png", b"<!doctype html><html><body><script>alert(1)</script></body></html>",
             "not_an_image"),
    "svg": ("drawing.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                           b'<rect width="10" height="10"/></svg>', "not_an_image"),
    "truncated-jpeg": ("cut.jpg", truncated("JPEG"), "broken"),
    "truncated-png": ("cut.png", truncated("PNG"), "broken"),
    "decompression-bomb": ("bomb.png", huge_png(60_000, 60_000), "too_many_pixels"),
    "bomb-under-pillows-limit": ("bomb2.png", huge_png(10_000, 6_000), "too_many_pixels"),
    "corrupt-exif-jpeg": ("exif.jpg", encode(Image.new("RGB", (32, 32), (0, 128, 0)), "JPEG",
                                             exif=b"Exif\x00\x00" + b"\xff" * 64), None),
    "1x1": ("dot.png", encode(Image.new("RGB", (1, 1), (10, 200, 10)), "PNG"), None),
    "30000x10": ("sliver.png", encode(Image.new("RGB", (30_000, 10), (10, 200, 10)), "PNG"), None),
    "cmyk-jpeg": ("cmyk.jpg", encode(Image.new("CMYK", (48, 48), (0, 255, 255, 0)), "JPEG"), None),
    "16-bit-png": ("deep.png", encode(Image.new("I;16", (48, 48), 40_000), "PNG"), None),
    "palette-transparency": ("palette.png", palette_with_transparency(), None),
    "animated-gif": ("anim.gif", animated_gif(), None),
    "exif-rotated-jpeg": ("rotated.jpg", exif_rotated(), None),
    "webp": ("photo.webp", encode(Image.new("RGB", (48, 48), (90, 20, 160)), "WEBP"), None),
    "huge-icc-profile": ("icc.jpg", encode(Image.new("RGB", (48, 48)), "JPEG", icc_profile=b"\0" * 2_000_000),
                         None),
}
BAD = sorted(kind for kind, (_, _, code) in KINDS.items() if code)
GOOD = sorted(kind for kind, (_, _, code) in KINDS.items() if not code)
# What the shop's own form refuses: Django's ImageField opens and verifies the upload with
# Pillow. clip_search does not widen the shop's validation; the rest is saved and embedded.
ADMIN_FORM_REFUSES = {"zero-bytes", "text-as-jpg", "html", "svg", "truncated-png", "decompression-bomb"}


@pytest.fixture
def encoder(media):
    return register_encoder()


def assert_row(kind: str, product: Product) -> None:
    """The product is kept and its row is the right outcome, with the reason for a bad image."""
    assert Product.objects.filter(pk=product.pk).exists(), kind
    row = Embedding.objects.get(object_pk=str(product.pk))
    code = KINDS[kind][2]
    image = row.images.get()
    if code:
        assert row.status == Status.ERROR and image.vector is None, (kind, row.status, row.error)
        assert image.verdict == "error" and image.error.startswith(f"{code}: "), (kind, image.error)
        assert row.error == f"image 1: {image.error}" and len(image.error) > len(code) + 10, (kind, row.error)
        assert row.attempts >= 1, kind
    else:
        assert row.status in (Status.INDEXED, Status.FLAGGED) and not row.error, (kind, row.status, row.error)
        assert np.linalg.norm(vector_of(product)) == pytest.approx(1.0, abs=1e-3), kind


def products_with(kinds: list[str], seed: int) -> dict[str, Product]:
    """A product per kind whose image field names that file, as an import or a FileField would
    store it (the admin form's own validation is not in the way)."""
    products = {}
    with signals_off():
        for kind, spec in zip(kinds, generate_catalog(len(kinds), seed=seed), strict=True):
            product = create_product(spec)
            name, data, _ = KINDS[kind]
            product.image.save(name, ContentFile(data), save=True)
            products[kind] = product
    return products


# --------------------------------------------------------------------------- the embed task


def test_the_embed_task_gives_every_kind_its_row_in_one_batch(encoder):
    """One batch mixing every kind: the bad ones do not spoil the good ones."""
    products = products_with(sorted(KINDS), seed=90)
    summary = embed_batch("catalog.product", [str(p.pk) for p in products.values()])
    assert set(summary["errors"]) == {str(products[kind].pk) for kind in BAD}
    for kind, product in products.items():
        assert_row(kind, product)


# --------------------------------------------------------------------------- clip_reindex


def test_clip_reindex_reports_each_bad_image_and_embeds_the_rest(encoder, capsys):
    products = products_with(sorted(KINDS), seed=91)
    with pytest.raises(CommandError, match=f"{len(BAD)} objects failed"):
        call_command("clip_reindex", "--batch-size", "8")
    out = capsys.readouterr().out
    for kind in BAD:
        assert f"failed catalog.product pk={products[kind].pk}" in out, kind
    for kind, product in products.items():
        assert_row(kind, product)


# --------------------------------------------------------------------------- the admin product form


@pytest.fixture
def staff_client(client, db):
    staff = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw")
    client.force_login(staff)
    return client


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_admin_product_form(kind, staff_client, encoder, tmp_path, django_capture_on_commit_callbacks):
    spec = generate_catalog(1, seed=92)[0]
    template = create_product(spec, image=b"")  # brings the brand and category
    name, data, _ = KINDS[kind]
    form = {"title": "Odd upload", "description": kind, "sku": f"ODD-{kind}"[:40],
            "brand": template.brand_id, "category": template.category_id, "price": "9.99",
            "in_stock": "on", "is_public": "on",
            "image": SimpleUploadedFile(name, data, content_type="application/octet-stream"),
            # The gallery inline's management form: no gallery picture in this upload.
            "gallery-TOTAL_FORMS": "0", "gallery-INITIAL_FORMS": "0"}
    with filesystem_broker(tmp_path / "broker") as queue, \
            django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(reverse("admin:catalog_product_add"), form)
    if kind in ADMIN_FORM_REFUSES:  # a form error naming the field, nothing saved or queued
        assert response.status_code == 200, response.status_code
        assert response.context["adminform"].form.errors["image"], kind
        assert not Product.objects.filter(sku=form["sku"]).exists()
        assert queued_tasks(queue) == []
        return
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    product = Product.objects.get(sku=form["sku"])
    [(task, args)] = queued_tasks(queue)  # the save queued one embed task, after the commit
    assert task == "clip_search.embed_batch" and args[1] == [str(product.pk)]
    embed_batch(*args)  # what the worker does with it
    assert_row(kind, product)
    change = staff_client.get(reverse("admin:catalog_product_changelist"), {"q": form["sku"]})
    assert change.status_code == 200
    if KINDS[kind][2]:  # the reason is the status badge's tooltip
        assert f'clip-status-error" title="image 1: {KINDS[kind][2]}: ' in change.content.decode()


# --------------------------------------------------------------------------- API image search


API_ANSWER = {"empty": (400, "invalid"), "not_an_image": (415, "not_an_image"), "broken": (400, "broken"),
              "too_many_pixels": (400, "too_many_pixels")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_api_image_search(kind, encoder):
    _, data, code = KINDS[kind]
    response = image_search(APIClient(), data)
    if code is None:
        assert response.status_code == 200, response.content
        assert response.json()["legs"] == ["vector"]
    else:
        status, error_code = API_ANSWER[code]
        assert_error(response, status, error_code)


def test_the_embed_task_reads_a_file_larger_than_max_bytes_as_an_error(encoder, settings):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "IMAGE": {**settings.CLIP_SEARCH.get("IMAGE", {}),
                                                               "MAX_BYTES": 1000}}
    product = products_with(["huge-icc-profile"], seed=93)["huge-icc-profile"]
    embed_batch("catalog.product", [str(product.pk)])
    row = Embedding.objects.get(object_pk=str(product.pk))
    assert row.status == Status.ERROR and row.error.startswith("image 1: too_large: ") and "1000" in row.error
