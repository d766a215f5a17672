"""Who may do what, what the storefront may show, and hostile input.

Already covered elsewhere, and not repeated: the API review queue as anonymous and as a
customer, and the admin's read views as a customer (test_api, test_admin); SQL-looking
queries, 413/415 and the pixel limit of API uploads, the image throttle (test_api).
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import override_settings
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from clip_search.models import Embedding, ReviewItem
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import embedded_catalog, quarantine, set_status
from tests.reliability.conftest import unthrottled
from tests.test_admin import filesystem_broker, queued_tasks
from tests.test_api import assert_error, image_search, limits, url
from tests.test_imaging import huge_png

Status = Embedding.Status
CATALOG_SIZE = 16


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    with django_db_blocker.unblock(), \
            embedded_catalog(generate_catalog(CATALOG_SIZE, seed=77), tmp_path_factory.mktemp("media"),
                             django_db_blocker) as rows:
        yield [product for _, product in rows]


@pytest.fixture
def customer(db):
    return get_user_model().objects.create_user("customer", password="pw")


@pytest.fixture
def review_item(catalog, db) -> ReviewItem:
    return quarantine(Embedding.objects.filter(status=Status.INDEXED).order_by("pk").first())


# --------------------------------------------------------------------------- staff only


def admin_post(client, name: str, action: str, pks: list) -> object:
    return client.post(reverse(name), {"action": action, "_selected_action": pks})


@pytest.mark.parametrize("who", ["anonymous", "customer"])
def test_staff_pages_and_actions_refuse_anonymous_and_customers(who, client, customer, catalog,
                                                                review_item, tmp_path):
    if who == "customer":
        client.force_login(customer)
    product = catalog[0]
    login = reverse("admin:login")
    pages = [reverse("admin:catalog_product_clip_explain", args=[product.pk]) + "?q=mug",
             reverse("admin:catalog_product_clip_similar", args=[product.pk]),
             reverse("admin:catalog_product_clip_image_search"),
             reverse("admin:clip_search_reviewitem_change", args=[review_item.pk])]
    if who == "anonymous":  # a customer on the read views is test_admin's
        for page in pages:
            response = client.get(page)
            assert response.status_code == 302 and response.url.startswith(login), page
    with filesystem_broker(tmp_path / "broker") as queue:
        response = admin_post(client, "admin:catalog_product_changelist", "clip_reembed", [product.pk])
        assert response.status_code == 302 and response.url.startswith(login)
        assert queued_tasks(queue) == []  # the reindex action queued nothing
    for action in ("approve_selected", "reject_selected"):
        response = admin_post(client, "admin:clip_search_reviewitem_changelist", action, [review_item.pk])
        assert response.status_code == 302 and response.url.startswith(login)
    response = client.post(pages[-1], {"decision": "approve", "note": "let me in"})
    assert response.status_code == 302 and response.url.startswith(login)
    image = SimpleUploadedFile("q.png", catalog[1].image.open("rb").read())
    response = client.post(pages[2], {"image": image})
    assert response.status_code == 302 and response.url.startswith(login)
    review_item.refresh_from_db()
    assert review_item.status == ReviewItem.Status.OPEN and not review_item.decisions.exclude(
        user=None).exists()


# --------------------------------------------------------------------------- what the storefront shows


HOSTILE = ["'; DROP TABLE catalog_product; --", "1' OR '1'='1", "\") UNION SELECT * FROM auth_user --",
           "%' AND pg_sleep(10) --", "$$; TRUNCATE clip_search_embedding; $$", "a" * 10_000,
           "mug " * 2_500, "<script>alert(1)</script>", "\\x00\\u0000", "🔪" * 3000]
HIDDEN_STATUSES = [Status.FLAGGED, Status.REJECTED, Status.PENDING, Status.ERROR]


@pytest.fixture
def storefront(catalog, db):
    with override_settings(REST_FRAMEWORK=unthrottled()):
        cache.clear()
        yield APIClient()
    cache.clear()


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [hit["id"] for hit in response.json()["results"]]


def terms(products: list[Product]) -> list[str]:
    words = []
    for product in products:
        words += [product.sku, product.title, product.brand.name, product.category.name]
    return words


@given(data=st.data())
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_the_storefront_never_returns_a_hidden_product(storefront, catalog, data):
    """Random statuses and visibility over the catalog, random queries: every hit is public and
    indexed, by words, by picture and as "more like this"; a shown product's SKU still finds it."""
    states = data.draw(st.lists(st.tuples(st.sampled_from([Status.INDEXED, *HIDDEN_STATUSES]), st.booleans()),
                                min_size=len(catalog), max_size=len(catalog)), label="(status, is_public)")
    for product, (status, public) in zip(catalog, states, strict=True):
        set_status(product, status)
        Product.objects.filter(pk=product.pk).update(is_public=public)
    shown = {product.pk for product, (status, public) in zip(catalog, states, strict=True)
             if public and status == Status.INDEXED}

    query = data.draw(st.one_of(st.sampled_from(terms(catalog) + HOSTILE),
                                st.text(min_size=1, max_size=60)).filter(str.strip), label="query")
    response = storefront.get(url("search"), {"q": query, "limit": 100})
    if response.status_code == 400:  # only for a query with nothing searchable left in it
        assert_error(response, 400, "invalid")
    else:
        assert set(ids(response)) <= shown, query

    product = data.draw(st.sampled_from(catalog), label="product")
    assert set(ids(image_search(storefront, product.image.open("rb").read(), query="?limit=100"))) <= shown
    similar = storefront.get(url("similar", product_id=product.pk), {"limit": 100})
    if product.pk in shown:
        assert set(ids(similar)) <= shown - {product.pk}
        assert ids(storefront.get(url("search"), {"q": product.sku}))[0] == product.pk  # search works
    else:
        assert similar.status_code in (404, 409)
    assert Product.objects.count() == CATALOG_SIZE


def test_long_and_sql_looking_queries_are_harmless_in_the_admin_too(client, catalog, db):
    client.force_login(get_user_model().objects.create_superuser("staff", "s@example.com", "pw"))
    product = catalog[2]
    for query in HOSTILE:
        assert client.get(reverse("admin:catalog_product_changelist"), {"q": query}).status_code == 200
        explain = client.get(reverse("admin:catalog_product_clip_explain", args=[product.pk]), {"q": query})
        assert explain.status_code == 200
    assert Product.objects.count() == CATALOG_SIZE
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM clip_search_embedding")
        assert cursor.fetchone()[0] == CATALOG_SIZE
    body = APIClient().get(url("search"), {"q": "a" * 10_000}).json()
    assert body["truncated"] is True and len(body["query"]) <= 512


# --------------------------------------------------------------------------- upload limits


def test_admin_image_search_enforces_the_size_and_pixel_limits(client, catalog, db):
    client.force_login(get_user_model().objects.create_superuser("staff", "s@example.com", "pw"))
    page = reverse("admin:catalog_product_clip_image_search")
    data = catalog[0].image.open("rb").read()
    with override_settings(CLIP_SEARCH=limits(MAX_BYTES=len(data) - 1)):
        response = client.post(page, {"image": SimpleUploadedFile("q.png", data)})
    assert response.status_code == 200 and "limit is" in response.context["form"].errors["image"][0]
    response = client.post(page, {"image": SimpleUploadedFile("bomb.png", huge_png(20_000, 20_000))})
    assert response.status_code == 200 and "pixels" in response.context["form"].errors["image"][0]
    assert "rows" not in response.context


# --------------------------------------------------------------------------- throttling


def test_the_image_throttle_cannot_be_dodged_with_a_forged_forwarded_for_header(catalog, db):
    """Without NUM_PROXIES, DRF would key the throttle on whatever X-Forwarded-For says."""
    rates = {"clip_search": "50/min", "clip_search_image": "2/min"}
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": rates}):
        cache.clear()
        api = APIClient()
        answers = [image_search(api, b"", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code
                   for n in range(4)]
        assert answers == [400, 400, 429, 429]
        with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": rates, "NUM_PROXIES": 1}):
            # Behind one proxy the shop declares it, and each client address gets its own bucket.
            assert image_search(api, b"", HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 400
    cache.clear()
