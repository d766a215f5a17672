"""The storefront REST API (clip_search.api) on a real embedded catalog, through DRF's client.

Asserts lean only on what any model gets right (an exact SKU ranks first, a product's own
picture finds it), so they hold for the under-trained quick model too.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.core.exceptions import SuspiciousFileOperation
from django.db import InterfaceError, OperationalError, connection, transaction
from django.test import override_settings
from django.urls import URLPattern, reverse
from PIL import Image
from rest_framework.authentication import BasicAuthentication
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory

from clip_search.api import urls as api_urls
from clip_search.api import views as api_views
from clip_search.models import Embedding, ReviewDecision, ReviewItem
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Category, Product
from tests.catalog import embedded_catalog, encoder_weights_deleted, quarantine, set_status

CATALOG_SIZE = 120
Status = Embedding.Status


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    specs = generate_catalog(CATALOG_SIZE, seed=2026)
    with django_db_blocker.unblock(), \
            embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker) as rows:
        yield rows


@pytest.fixture
def shown(catalog, db) -> list[Product]:
    """Products the storefront may show: public, and embedded as searchable."""
    indexed = set(Embedding.objects.filter(status=Status.INDEXED).values_list("object_pk", flat=True))
    return [product for spec, product in catalog
            if spec.is_public and not spec.is_unsafe and str(product.pk) in indexed]


@pytest.fixture(autouse=True)
def fresh_throttles():
    cache.clear()  # the throttles count in the default cache
    yield
    cache.clear()


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def url(name: str, **kwargs) -> str:
    return reverse(f"clip_search_api:{name}", kwargs={"version": "v1", **kwargs})


def image_bytes(product: Product) -> bytes:
    with product.image.open("rb") as handle:
        return handle.read()


def upload(data: bytes, name: str = "query.png") -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file


def search(api: APIClient, q: str, **params) -> dict:
    response = api.get(url("search"), {"q": q, **params})
    assert response.status_code == 200, response.content
    return response.json()


def image_search(api: APIClient, data: bytes, *, q: str = "", query: str = "", **kwargs):
    body = {"image": upload(data), **({"q": q} if q else {})}
    return api.post(url("image-search") + query, body, format="multipart", **kwargs)


def skus(body: dict) -> list[str]:
    return [hit["sku"] for hit in body["results"]]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = json.loads(response.content)  # a test client's response or a view's, rendered
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


# --------------------------------------------------------------------------- text search


def test_text_search_finds_an_exact_sku_first_with_the_shops_fields(api, shown):
    product = shown[3]
    body = search(api, product.sku)
    assert list(body) == ["count", "next", "previous", "query", "truncated", "legs", "degraded",
                          "did_you_mean", "unknown_words", "relaxed", "capped", "search_id", "sort", "sorts",
                          "facets", "results"]
    assert body["query"] == product.sku and body["degraded"] == {} and not body["truncated"]
    assert body["legs"] == ["vector", "fulltext", "keyword"]
    top = body["results"][0]
    assert top["id"] == product.pk and top["sku"] == product.sku and top["title"] == product.title
    assert top["brand"] == product.brand.name and top["category"] == product.category.name
    assert top["price"] == str(product.price) and top["in_stock"] == product.in_stock
    assert top["image"] == f"http://testserver{product.image.url}"
    assert top["rank"] == 1 and top["score"] > 1 and top["explain"] is None  # exact match boost
    assert top["highlight"] is None and body["did_you_mean"] is None and body["sort"] == "relevance"
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_explain_gives_each_legs_evidence(api, shown):
    product = shown[5]
    body = search(api, product.sku, explain="1")
    top = body["results"][0]
    assert top["explain"]["score"] == pytest.approx(top["score"])
    assert top["explain"]["keyword"]["rank"] == 1 and top["explain"]["keyword"]["exact"] is True
    for hit in body["results"]:
        assert set(hit["explain"]) == {"score", "vector", "fulltext", "keyword"}
        assert any(hit["explain"][leg] for leg in ("vector", "fulltext", "keyword"))


def test_pages_are_limit_offset_slices_of_one_ranking(api, shown):
    whole = search(api, "red mug", limit=30)
    assert len(whole["results"]) == min(30, whole["count"])
    first = search(api, "red mug", limit=10)
    assert len(first["results"]) == 10 and first["previous"] is None and "offset=10" in first["next"]
    second = api.get(first["next"]).json()
    assert "offset=20" in second["next"] and second["previous"]
    assert [h["id"] for h in first["results"] + second["results"]] == [h["id"] for h in whole["results"][:20]]
    assert [h["rank"] for h in second["results"]] == list(range(11, 21))
    assert len(search(api, "red mug")["results"]) == min(24, whole["count"])  # PAGE_SIZE
    everything = search(api, "red mug", limit=1000)
    assert len(everything["results"]) == min(100, whole["count"])  # MAX_PAGE_SIZE
    # count is the number of hits (no COUNT query), and every one of them is reachable, past the
    # first 100 too: the pages walked to the end hold exactly count hits, ranked 1..count.
    walked, page = [], everything
    while True:
        walked += page["results"]
        if not page["next"]:
            break
        page = api.get(page["next"]).json()
    assert [h["rank"] for h in walked] == list(range(1, whole["count"] + 1))
    assert len({h["id"] for h in walked}) == whole["count"]


def test_filters_are_the_shops_filterset(api, shown):
    cheap = search(api, "bag", min_price="10", max_price="40", limit=100)
    assert cheap["count"] and all(10 <= float(hit["price"]) <= 40 for hit in cheap["results"])
    # A filter narrows inside the search: the SKU is still found when it matches the filter ...
    product = shown[1]
    price = str(product.price)
    assert skus(search(api, product.sku, min_price=price, max_price=price))[0] == product.sku
    # ... and not when it does not.
    assert product.sku not in skus(search(api, product.sku, min_price=str(product.price + 1), limit=100))
    assert search(api, "mug", max_price="0")["count"] == 0


def test_facets_narrow_the_hits_and_count_them(api, shown):
    mugs = search(api, "red mug", category="mug", limit=100)
    assert mugs["count"] and {hit["category"] for hit in mugs["results"]} == {"Mugs"}
    out = search(api, "shoe", in_stock="false", limit=100)
    assert out["count"] and not any(hit["in_stock"] for hit in out["results"])
    brand = shown[0].brand.name
    branded = search(api, "lamp", brand=brand, limit=100)
    assert branded["count"] and {hit["brand"] for hit in branded["results"]} == {brand}
    two = search(api, "lamp", brand=[brand, shown[1].brand.name], limit=100)  # any of the values
    assert {hit["brand"] for hit in two["results"]} == {brand, shown[1].brand.name} - {None}
    band = search(api, "bag", price="25-50", limit=100)
    assert band["count"] and all(25 <= float(hit["price"]) < 50 for hit in band["results"])
    product = shown[1]
    other = Category.objects.exclude(pk=product.category_id).first()
    assert product.sku not in skus(search(api, product.sku, category=other.slug, limit=100))


@pytest.mark.parametrize("params, field", [
    ({}, "q"), ({"q": ""}, "q"), ({"q": "   "}, "q"), ({"q": "mug\x00"}, "q"),
    ({"q": "mug", "price": "cheap"}, "price"), ({"q": "mug", "in_stock": "maybe"}, "in_stock"),
    ({"q": "mug", "sort": "cheapest"}, "sort"),
    ({"q": "mug", "min_price": "cheap"}, "min_price"),
    ({"q": "mug", "explain": "perhaps"}, "explain"),
])
def test_a_bad_query_or_filter_is_400_with_the_reason(api, shown, params, field):
    error = assert_error(api.get(url("search"), params), 400, "invalid")
    assert field in error["detail"] and error["message"].startswith(f"{field}: ")


def test_hostile_and_long_queries_are_answered(api, shown):
    for q in ["'; DROP TABLE catalog_product; --", "a & b | !c", "\"unterminated", "%", "🔪 ∑ Ω"]:
        search(api, q)
    long = search(api, "mug " * 500)
    assert long["truncated"] is True and len(long["query"]) <= 512


# --------------------------------------------------------------------------- what the storefront hides


def test_the_storefront_never_returns_hidden_products(api, shown):
    """Non-public (the shop's rule), flagged, rejected and pending products: by SKU, by their own
    picture, and as "more like this" neighbours."""
    hidden = {"non-public": shown[10], "flagged": shown[11], "rejected": shown[12], "pending": shown[13]}
    Product.objects.filter(pk=hidden["non-public"].pk).update(is_public=False)
    set_status(hidden["flagged"], Status.FLAGGED)
    set_status(hidden["rejected"], Status.REJECTED)
    set_status(hidden["pending"], Status.PENDING)
    hidden_skus = {product.sku for product in hidden.values()}
    for why, product in hidden.items():
        assert product.sku not in skus(search(api, product.sku, limit=100)), why
        assert product.sku not in skus(search(api, product.title, limit=100)), why
        response = image_search(api, image_bytes(product), query="?limit=100")
        assert response.status_code == 200 and product.sku not in skus(response.json()), why
        assert api.get(url("similar", product_id=product.pk)).status_code in (404, 409), why
    for product in shown[:5]:
        neighbours = api.get(url("similar", product_id=product.pk), {"limit": 100}).json()
        assert neighbours["count"] and not hidden_skus & set(skus(neighbours))


def test_hidden_products_are_404_for_more_like_this(api, shown):
    Product.objects.filter(pk=shown[20].pk).update(is_public=False)
    set_status(shown[21], Status.FLAGGED)
    set_status(shown[22], Status.REJECTED)
    for product in shown[20:23]:
        assert_error(api.get(url("similar", product_id=product.pk)), 404, "not_found")
    for product_id in ("999999999", "not-a-number"):
        assert_error(api.get(url("similar", product_id=product_id)), 404, "not_found")
    set_status(shown[23], Status.PENDING)
    assert_error(api.get(url("similar", product_id=shown[23].pk)), 409, "not_indexed")
    Embedding.objects.filter(object_pk=str(shown[24].pk)).delete()
    assert_error(api.get(url("similar", product_id=shown[24].pk)), 409, "not_indexed")


# --------------------------------------------------------------------------- more like this


def test_more_like_this_excludes_the_product_and_honours_filters(api, shown):
    product = shown[2]
    body = api.get(url("similar", product_id=product.pk), {"explain": "true", "limit": 20}).json()
    assert body["count"] and product.sku not in skus(body) and body["query"] == ""
    assert body["legs"] == ["vector"]
    assert all(hit["explain"]["vector"]["rank"] for hit in body["results"])
    same = api.get(url("similar", product_id=product.pk),
                   {"category": product.category.slug, "limit": 100}).json()
    assert same["count"] and {hit["category"] for hit in same["results"]} == {product.category.name}
    assert_error(api.get(url("similar", product_id=product.pk), {"min_price": "x"}), 400, "invalid")


# --------------------------------------------------------------------------- image search


def test_image_search_finds_the_pictured_product(api, shown):
    product = shown[7]
    response = image_search(api, image_bytes(product), query="?limit=5&explain=1")
    assert response.status_code == 200, response.content
    body = response.json()
    assert product.sku in skus(body)[:3] and body["legs"] == ["vector"] and body["degraded"] == {}
    assert all(hit["explain"]["vector"] for hit in body["results"])
    assert len(body["results"]) == 5 and "offset=5" in body["next"] and "explain=1" in body["next"]


def test_image_search_with_words_and_filters(api, shown):
    product = shown[8]
    response = image_search(api, image_bytes(product), q=product.brand.name,
                            query=f"?category={product.category.slug}&limit=100")
    body = response.json()
    assert response.status_code == 200 and body["query"] == product.brand.name
    assert set(body["legs"]) == {"vector", "fulltext", "keyword"}
    assert {hit["category"] for hit in body["results"]} == {product.category.name}
    assert product.sku in skus(body)[:5]
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(product))).convert("RGB").save(jpeg, "JPEG", quality=95)
    assert image_search(api, jpeg.getvalue()).status_code == 200


def limits(**image) -> dict:
    from django.conf import settings

    return {**settings.CLIP_SEARCH, "IMAGE": {**settings.CLIP_SEARCH.get("IMAGE", {}), **image}}


def test_an_upload_over_max_bytes_is_413(api, shown):
    data = image_bytes(shown[0])
    with override_settings(CLIP_SEARCH=limits(MAX_BYTES=len(data) - 1)):
        error = assert_error(image_search(api, data), 413, "too_large")
        assert str(len(data) - 1) in error["message"]
    with override_settings(CLIP_SEARCH=limits(MAX_BYTES=1000)):  # refused from Content-Length alone
        assert_error(image_search(api, b"\x89PNG" + b"\0" * 200_000), 413, "too_large")
    assert image_search(api, data).status_code == 200


def test_a_file_that_is_not_an_image_is_415(api, shown):
    assert_error(image_search(api, b"%PDF-1.4 definitely not a picture\n" * 20), 415, "not_an_image")
    with override_settings(CLIP_SEARCH=limits(FORMATS=["JPEG"])):  # a PNG where only JPEG is allowed
        assert_error(image_search(api, image_bytes(shown[0])), 415, "not_an_image")
    response = api.post(url("image-search"), {"image": "x"}, format="json")
    assert_error(response, 415, "unsupported_media_type")


def test_a_broken_empty_missing_or_bomb_image_is_400(api, shown):
    data = image_bytes(shown[0])
    assert_error(image_search(api, data[: len(data) // 2]), 400, "broken")
    assert "image" in assert_error(image_search(api, b""), 400, "invalid")["detail"]
    missing = api.post(url("image-search"), {"q": "mug"}, format="multipart")
    assert "image" in assert_error(missing, 400, "invalid")["detail"]
    with override_settings(CLIP_SEARCH=limits(MAX_PIXELS=100)):
        assert_error(image_search(api, data), 400, "too_many_pixels")
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # 400 MP in a few kB
    assert_error(image_search(api, bomb.getvalue()), 400, "too_many_pixels")


@pytest.mark.parametrize("fields, message", [
    ({f"field{n}": "x" for n in range(5_000)}, "too many form fields"),  # TooManyFieldsSent
    ({"q": "mug " * 700_000}, "form data is too large"),  # 2.8 MB of text: RequestDataTooBig
], ids=["5000-fields", "3MB-field"])
def test_a_request_django_finds_suspicious_is_a_400_error_body(api, shown, fields, message, caplog):
    """DRF parses the body inside the view, so Django's refusal reaches the API's handler: JSON,
    not Django's HTML 400 page, and still logged where Django logs it (django.security.*)."""
    body = {**fields, "image": upload(image_bytes(shown[0]))}
    response = api.post(url("image-search"), body, format="multipart")
    error = assert_error(response, 400, "bad_request")
    assert message in error["message"] and response["Content-Type"] == "application/json"
    assert [record.levelname for record in caplog.records if record.name.startswith("django.security.")] \
        == ["ERROR"]
    assert image_search(api, image_bytes(shown[0])).status_code == 200


@pytest.fixture
def encoder_down(shown, tmp_path, demo_model_dir):
    """The active encoder's weights are really gone (a deleted copy), not a mock."""
    with encoder_weights_deleted(demo_model_dir, tmp_path):
        yield


def test_with_the_encoder_down_search_degrades_and_image_search_is_503(api, shown, encoder_down):
    product = shown[9]
    body = search(api, product.sku)
    assert skus(body)[0] == product.sku
    assert "vector" in body["degraded"] and body["legs"] == ["fulltext", "keyword"]
    assert_error(image_search(api, image_bytes(product)), 503, "image_search_unavailable")
    response = image_search(api, image_bytes(product), q=product.sku)  # the words still answer
    assert response.status_code == 200
    body = response.json()
    assert skus(body)[0] == product.sku and {"image", "vector"} <= set(body["degraded"])
    assert "local-dir" not in response.content.decode()  # the reason is logged, not shown (paths)


# --------------------------------------------------------------------------- throttling


def test_image_search_has_its_own_stricter_throttle(api, shown):
    rates = {"clip_search": "5/min", "clip_search_image": "2/min"}
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": rates}):
        cache.clear()
        for _ in range(2):
            assert image_search(api, b"").status_code == 400
        response = image_search(api, b"")
        error = assert_error(response, 429, "throttled")
        assert 0 < int(response["Retry-After"]) <= 60 and error["detail"]["retry_after"] > 0
        for _ in range(5):  # the search scope is counted apart
            assert api.get(url("search"), {"q": "mug"}).status_code == 200
        assert_error(api.get(url("search"), {"q": "mug"}), 429, "throttled")
        assert_error(api.get(url("similar", product_id=shown[0].pk)), 429, "throttled")


# --------------------------------------------------------------------------- review queue


def user_with(username: str, *codenames: str, is_staff: bool = True):
    """A user with exactly these clip_search permissions (``"view_reviewitem"``...)."""
    user = get_user_model().objects.create_user(username, password="pw", is_staff=is_staff)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="clip_search",
                                                         codename__in=codenames))
    assert {p.split(".", 1)[1] for p in user.get_all_permissions()} == set(codenames)
    return user


@pytest.fixture
def staff(db):
    """A reviewer: staff with the permission to decide review items, which implies seeing them."""
    return user_with("reviewer", "change_reviewitem")


@pytest.fixture
def customer(db):
    return get_user_model().objects.create_user("customer", password="pw")


@pytest.fixture
def flagged(shown) -> list[tuple[Product, ReviewItem]]:
    """Three products quarantined as moderation would, each with an open review item."""
    items = []
    for product in shown[30:33]:
        items.append((product, quarantine(Embedding.objects.get(object_pk=str(product.pk)))))
    return items


def test_the_review_queue_is_for_staff_only(api, flagged, customer, monkeypatch):
    item = flagged[0][1]
    routes = [("get", url("review-list")), ("post", url("review-approve", item_id=item.pk)),
              ("post", url("review-reject", item_id=item.pk))]
    for method, path in routes:
        assert_error(getattr(api, method)(path), 403, "not_authenticated")  # session auth: 403
    api.force_authenticate(customer)
    for method, path in routes:
        assert_error(getattr(api, method)(path), 403, "permission_denied")
    api.force_authenticate(None)
    # With an authentication scheme that can challenge, anonymous is a proper 401.
    monkeypatch.setattr(api_views.ReviewListView, "authentication_classes", [BasicAuthentication])
    response = api.get(url("review-list"))
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Basic")
    api.credentials(HTTP_AUTHORIZATION="Basic Y3VzdG9tZXI6cHc=")  # customer:pw
    assert_error(api.get(url("review-list")), 403, "permission_denied")
    assert ReviewItem.objects.get(pk=item.pk).status == ReviewItem.Status.OPEN


def test_staff_list_open_items_with_their_products(api, flagged, staff):
    api.force_authenticate(staff)
    body = api.get(url("review-list"), {"limit": 100}).json()
    assert list(body) == ["count", "next", "previous", "results"]
    # The model may have flagged some drawn knives too: theirs are open items as well.
    assert body["count"] == ReviewItem.objects.filter(status=ReviewItem.Status.OPEN).count() >= 3
    by_pk = {row["object_pk"]: row for row in body["results"]}
    product, item = flagged[0]
    row = by_pk[str(product.pk)]
    assert row["id"] == item.pk and row["model"] == "catalog.product" and row["status"] == "open"
    assert row["reason"] == "flagged" and row["categories"] == ["weapons"]
    assert row["scores"] == {"weapons": 0.9}
    assert row["embedding_status"] == "flagged"
    assert row["product"] == {"pk": str(product.pk), "name": str(product),
                              "image": f"http://testserver{product.image.url}"}
    assert api.get(url("review-list"), {"reason": "sampled"}).json()["count"] == 0
    assert_error(api.get(url("review-list"), {"reason": "bored"}), 400, "invalid")
    assert len(api.get(url("review-list"), {"limit": 2}).json()["results"]) == 2


def test_approve_makes_the_product_searchable_and_reject_keeps_it_out(api, flagged, staff):
    api.force_authenticate(staff)
    (approved, approve_item), (rejected, reject_item) = flagged[:2]
    assert approved.sku not in skus(search(api, approved.sku, limit=100))
    response = api.post(url("review-approve", item_id=approve_item.pk), {"note": "a cake knife"},
                        format="json")
    assert response.status_code == 200 and response.json()["status"] == "approved"
    assert response.json()["embedding_status"] == "indexed"
    assert skus(search(api, approved.sku))[0] == approved.sku
    assert_error(api.post(url("review-approve", item_id=approve_item.pk)), 409, "already_decided")
    response = api.post(url("review-reject", item_id=reject_item.pk), {"note": "a weapon"})
    assert response.status_code == 200 and response.json()["status"] == "rejected"
    assert response.json()["embedding_status"] == "rejected"
    decision = ReviewDecision.objects.filter(item=reject_item).latest("created_at")
    assert decision.note == "a weapon" and decision.user == staff and decision.decision == "rejected"
    assert rejected.sku not in skus(search(api, rejected.sku, limit=100))
    assert_error(api.post(url("review-reject", item_id=999999)), 404, "not_found")
    assert_error(api.post(url("review-reject", item_id=flagged[2][1].pk), {"note": "x" * 5000},
                          format="json"), 400, "invalid")
    still_open = {row["id"] for row in api.get(url("review-list"), {"limit": 100}).json()["results"]}
    assert flagged[2][1].pk in still_open and not {approve_item.pk, reject_item.pk} & still_open


def assert_still_quarantined(product: Product, item: ReviewItem) -> None:
    """Open, undecided, flagged, and out of the storefront's search."""
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.OPEN and item.decided_at is None
    assert list(item.decisions.values_list("decision", flat=True)) == [ReviewDecision.Decision.FLAGGED]
    assert Embedding.objects.get(pk=item.embedding_id).status == Status.FLAGGED
    assert product.sku not in skus(search(APIClient(), product.sku, limit=100))


def test_staff_without_the_review_permissions_can_neither_list_nor_decide(api, flagged):
    """is_staff alone used to be enough (IsAdminUser): now the model permissions decide."""
    product, item = flagged[0]
    api.force_authenticate(user_with("clerk"))  # staff, no permission at all
    error = assert_error(api.get(url("review-list")), 403, "permission_denied")
    assert error["message"] == "You do not have permission to see the review queue."
    for name in ("review-approve", "review-reject"):
        response = api.post(url(name, item_id=item.pk), {"note": "let me"}, format="json")
        error = assert_error(response, 403, "permission_denied")
        assert error["message"] == "You do not have permission to approve or reject uploads."
    assert_still_quarantined(product, item)


def test_the_view_permission_lists_the_queue_but_cannot_decide(api, flagged):
    product, item = flagged[0]
    api.force_authenticate(user_with("auditor", "view_reviewitem"))
    response = api.get(url("review-list"), {"limit": 100})
    assert response.status_code == 200, response.content
    assert item.pk in {row["id"] for row in response.json()["results"]}
    for name in ("review-approve", "review-reject"):
        assert_error(api.post(url(name, item_id=item.pk)), 403, "permission_denied")
    assert_still_quarantined(product, item)


def test_the_change_permission_decides_without_staff_and_superusers_need_no_grant(api, flagged):
    """The permission is the gate, not is_staff; a superuser has every permission."""
    (approved, approve_item), (rejected, reject_item) = flagged[:2]
    moderator = user_with("moderator", "change_reviewitem", is_staff=False)
    api.force_authenticate(moderator)
    assert api.get(url("review-list")).status_code == 200
    response = api.post(url("review-approve", item_id=approve_item.pk), {"note": "a cake knife"})
    assert response.status_code == 200 and response.json()["status"] == "approved"
    assert ReviewDecision.objects.get(item=approve_item, decision="approved").user == moderator
    assert skus(search(APIClient(), approved.sku))[0] == approved.sku
    api.force_authenticate(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))
    response = api.post(url("review-reject", item_id=reject_item.pk))
    assert response.status_code == 200 and response.json()["status"] == "rejected"


# --------------------------------------------------------------------------- conventions and schema


def test_every_error_has_the_one_body(api, shown):
    assert_error(api.get("/api/v2/search/", {"q": "mug"}), 404, "not_found")
    assert_error(api.post(url("search"), {"q": "mug"}), 405, "method_not_allowed")
    assert_error(api.get(url("image-search")), 405, "method_not_allowed")


# Two advisory lock keys of this test's own.
LOCK_A, LOCK_B = 7_401_001, 7_401_002


class DeadlockingView(api_views.ApiView):
    """Test only: takes lock A, waits until another transaction that holds B is waiting for A,
    then asks for B. PostgreSQL finds the cycle and aborts this side (its deadlock_timeout is the
    shorter one) with a real DeadlockDetected (40P01), which Django raises as OperationalError."""

    holding_a: threading.Event | None = None

    def get(self, request, version: str):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL deadlock_timeout = '100ms'")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_A])
            self.holding_a.set()
            deadline = time.monotonic() + 30
            while not waiting_for(cursor, LOCK_A):
                assert time.monotonic() < deadline, "the other transaction never waited for lock A"
                time.sleep(0.02)
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_B])
        return Response({"deadlocked": False})


def waiting_for(cursor, key: int) -> bool:
    cursor.execute("SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                   "AND objid = %s AND database = (SELECT oid FROM pg_database "
                   "WHERE datname = current_database()))", [key])
    return cursor.fetchone()[0]


def test_a_deadlock_in_a_view_is_a_503_to_retry(db, caplog, settings):
    settings.CLIP_SEARCH_API = {**settings.CLIP_SEARCH_API, "UNAVAILABLE_RETRY_AFTER": 2}
    holding_a, finished = threading.Event(), []

    def hold_b_then_wait_for_a() -> None:
        try:
            assert holding_a.wait(30)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL deadlock_timeout = '30s'")  # the view's side is the victim
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_B])
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_A])  # granted once the view gives up
            finished.append(True)
        finally:
            connection.close()

    other = threading.Thread(target=hold_b_then_wait_for_a)
    other.start()
    try:
        view = DeadlockingView.as_view(holding_a=holding_a)
        response = view(APIRequestFactory().get("/api/v1/deadlock/"), version="v1")
        response.render()
    finally:
        holding_a.set()
        other.join(60)
    assert finished == [True]  # the other transaction got both locks and committed
    error = assert_error(response, 503, "unavailable")
    assert response["Retry-After"] == "2" and error["detail"] == {"retry_after": 2}
    assert "2 seconds" in error["message"]
    text = response.content.decode().lower()
    assert not {"deadlock", "advisory", "select", "40p01", "psycopg"} & set(re.findall(r"[a-z0-9_]+", text))
    [record] = [r for r in caplog.records if r.name == "clip_search.api.errors"]
    assert record.levelname == "ERROR" and "40P01" in record.getMessage()
    assert isinstance(record.exc_info[1], OperationalError)
    assert isinstance(record.exc_info[1].__cause__, psycopg.errors.DeadlockDetected)


class RaisingView(api_views.ApiView):
    """Test only: raises what it is given."""

    error: Exception | None = None

    def get(self, request, version: str):
        raise self.error


@pytest.mark.parametrize("error, status, code, hidden", [
    # psycopg2's word for a connection that died under a persistent connection.
    (InterfaceError("connection already closed"), 503, "unavailable", "closed"),
    # Its text names the server's paths: the client gets a generic message.
    (SuspiciousFileOperation("Detected path traversal attempt in '/srv/shop/media/../settings.py'"),
     400, "bad_request", "/srv/shop"),
], ids=["InterfaceError", "SuspiciousFileOperation"])
def test_what_a_view_raises_is_answered_without_its_text(db, error, status, code, hidden):
    response = RaisingView.as_view(error=error)(APIRequestFactory().get("/api/v1/x/"), version="v1")
    response.render()
    assert_error(response, status, code)
    assert hidden not in response.content.decode()


def test_a_shop_without_its_own_serializer_or_filterset_gets_defaults(api, shown):
    options = {"MODEL": "catalog.product", "FIELDS": ["sku", "price"], "FILTER_FIELDS": {"price": ["lte"]}}
    with override_settings(CLIP_SEARCH_API=options):
        product = shown[4]
        body = search(api, product.sku, price__lte="10000")
        top = body["results"][0]
        assert set(top) == {"pk", "name", "image", "sku", "price", "score", "rank", "explain", "highlight"}
        assert top["pk"] == product.pk and top["name"] == str(product) and top["sku"] == product.sku
        cheap = search(api, "mug", price__lte="20", limit=100)["results"]
        assert cheap and all(float(hit["price"]) <= 20 for hit in cheap)


def schema(api: APIClient) -> dict:
    response = api.get(url("schema"), {"format": "json"})
    assert response.status_code == 200
    return response.json()


def test_the_openapi_schema_is_valid_and_covers_every_route(api, db):
    from drf_spectacular.validation import validate_schema

    document = schema(api)
    validate_schema(document)
    assert document["openapi"].startswith("3.")
    operations = {}
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern)
        view = pattern.callback.cls
        if not getattr(view, "clip_search_api", False):
            continue  # the schema and docs views themselves
        path = "/api/" + str(pattern.pattern).replace("<str:version>", "v1")
        for name, converter in (("product_id", "str"), ("item_id", "int"), ("tag_id", "int")):
            path = path.replace(f"<{converter}:{name}>", f"{{{name}}}")
        for method in ("get", "post"):
            if hasattr(view, method):
                operations[(path, method)] = document["paths"][path][method]
    assert len(operations) == 12 and set(document["paths"]) == {path for path, _ in operations}
    for (path, _method), operation in operations.items():
        assert operation["summary"] and operation["description"], path
        for parameter in operation.get("parameters", []):
            assert parameter.get("description"), (path, parameter["name"])
        responses = operation["responses"]
        assert "200" in responses and all(response["description"] for response in responses.values())
        errors = {code for code in responses if code != "200"}
        assert errors and all(responses[code]["content"]["application/json"]["schema"]["$ref"]
                              == "#/components/schemas/Error" for code in errors), path
    image = operations[("/api/v1/search/image/", "post")]
    assert {"400", "413", "415", "429", "503"} <= set(image["responses"])
    body = image["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert document["components"]["schemas"][body]["properties"]["image"]["format"] == "binary"
    text = operations[("/api/v1/search/", "get")]
    assert {"q", "explain", "highlight", "sort", "correct", "limit", "offset", "category", "brand", "price",
            "min_price", "max_price", "in_stock"} <= {parameter["name"] for parameter in text["parameters"]}
    suggest = operations[("/api/v1/suggest/", "get")]
    assert {"q", "limit"} <= {parameter["name"] for parameter in suggest["parameters"]}
    for path, method in operations:
        if "/review/" in path:
            assert {"401", "403"} <= set(document["paths"][path][method]["responses"])


def test_the_docs_page_points_at_the_schema(api, db):
    response = api.get(url("docs"))
    assert response.status_code == 200 and url("schema").encode() in response.content
