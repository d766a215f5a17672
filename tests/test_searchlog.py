"""The search log (issue 18): what the API records, events tied to their search, retention, no
personal data, and the analytics the admin draws from it."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from clip_search import analytics, searchlog
from clip_search.models import SearchEvent, SearchRecord
from clip_search.search import search
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import embedded_catalog

pytestmark = pytest.mark.usefixtures("empty_search_log")


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    specs = [spec for spec in generate_catalog(60, seed=5) if spec.is_public and not spec.is_unsafe]
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker, calibrate=True) as rows:
        yield rows


@pytest.fixture
def api(catalog, db) -> APIClient:
    cache.clear()
    return APIClient()


def url(name: str) -> str:
    return reverse(f"clip_search_api:{name}", kwargs={"version": "v1"})


def searched(api: APIClient, **params) -> dict:
    response = api.get(url("search"), params, REMOTE_ADDR="203.0.113.7", HTTP_USER_AGENT="Test/1.0")
    assert response.status_code == 200, response.content
    searchlog.flush()  # what the writer thread does a moment later
    return response.json()


def event(api: APIClient, body: dict, **kwargs):
    """As ``navigator.sendBeacon(url, JSON.stringify(body))`` sends it: text/plain."""
    return api.post(url("events"), json.dumps(body), content_type="text/plain;charset=UTF-8", **kwargs)


def test_an_api_search_is_logged_with_what_the_shopper_saw(api):
    body = searched(api, q="red mug", sort="price", limit=5)
    row = SearchRecord.objects.get(pk=body["search_id"])
    assert (row.query, row.kind, row.hits) == ("red mug", "text", body["count"])
    assert row.filters == {"sort": ["price"]}
    assert row.results[:5] == [str(hit["id"]) for hit in body["results"]]  # in the order shown (by price)
    assert len(row.found_by) == len(row.results) and all(set(f) <= set("vfk") and f for f in row.found_by)
    assert row.legs == body["legs"] and row.latency_ms > 0 and not row.degraded
    # No personal data: the session is a keyed hash, neither the address nor the agent is kept.
    assert len(row.session) == 32 and "203.0.113.7" not in json.dumps(
        [getattr(row, f.attname) for f in SearchRecord._meta.concrete_fields], default=str)
    again = SearchRecord.objects.get(pk=searched(api, q="blue hat")["search_id"])
    assert again.session == row.session  # the same shopper, the same day
    corrected = SearchRecord.objects.get(pk=searched(api, q="umbrela")["search_id"])
    assert corrected.corrected_query == "umbrella"
    nothing = SearchRecord.objects.get(pk=searched(api, q="xqzvbl qwrtzp")["search_id"])
    assert nothing.zero_results and nothing.results == []


def test_with_the_log_off_nothing_is_written(api, settings):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "SEARCH_LOG": {"ENABLED": False}}
    assert searched(api, q="red mug")["search_id"] is None
    assert not SearchRecord.objects.exists()
    assert event(api, {"search_id": str(uuid.uuid4()), "kind": "click", "product_id": "1"}).status_code == 404


def test_events_are_validated_and_tied_to_their_search(api):
    body = searched(api, q="red mug", limit=5)
    second = body["results"][1]["id"]
    clicked = event(api, {"search_id": body["search_id"], "kind": "click", "product_id": second})
    assert clicked.status_code == 200 and clicked.json() == {"recorded": True, "position": 2}, clicked.content
    assert event(api, {"search_id": body["search_id"], "kind": "add_to_cart", "product_id": second,
                       "position": 2}).status_code == 200
    assert list(SearchEvent.objects.filter(search_id=body["search_id"]).values_list("kind", "position")) == [
        ("click", 2), ("add_to_cart", 2)]
    refused = [
        ({"search_id": str(uuid.uuid4()), "kind": "click", "product_id": second}, "unknown_search"),
        ({"search_id": body["search_id"], "kind": "click", "product_id": "999999"}, "not_in_results"),
        ({"search_id": body["search_id"], "kind": "click", "product_id": second, "position": 1},
         "wrong_position"),
        ({"search_id": body["search_id"], "kind": "stare", "product_id": second}, "invalid"),
        ({"search_id": "not-a-uuid", "kind": "click", "product_id": second}, "invalid"),
        ({"search_id": body["search_id"], "kind": "click", "product_id": second, "position": 0}, "invalid"),
    ]
    for payload, code in refused:
        response = event(api, payload)
        assert response.status_code == 400, (payload, response.content)
        assert response.json()["error"]["code"] == code, (payload, response.content)
    assert SearchEvent.objects.count() == 2
    # A form post and JSON work too; a logged-in shopper's beacon needs no CSRF token.
    form = api.post(url("events"), {"search_id": body["search_id"], "kind": "purchase", "product_id": second})
    assert form.status_code == 200


def test_a_shops_own_search_is_logged_when_it_asks(catalog, db):
    results = search(Product.objects.all(), text="green lamp")
    search_id = searchlog.record(results, kind=SearchRecord.Kind.TEXT)
    row = SearchRecord.objects.get(pk=search_id)
    assert row.query == "green lamp" and row.results == list(results.search_info.hits)[:100]
    first = row.results[0]
    assert searchlog.add_event(search_id, "click", first).position == 1


def test_the_log_is_purged_after_its_retention(catalog, db):
    content_type = ContentType.objects.get_for_model(Product)
    old = SearchRecord.objects.create(id=uuid.uuid4(), created_at=timezone.now() - timedelta(days=91),
                                      content_type=content_type, query="old", results=["1"])
    SearchEvent.objects.create(search=old, kind="click", object_pk="1", position=1, created_at=timezone.now())
    recent = SearchRecord.objects.create(id=uuid.uuid4(), created_at=timezone.now() - timedelta(days=89),
                                         content_type=content_type, query="recent")
    assert searchlog.purge() == 1
    assert list(SearchRecord.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not SearchEvent.objects.exists()
    with override_settings(CLIP_SEARCH={"SEARCH_LOG": {"RETENTION_DAYS": 30}}):
        assert searchlog.purge() == 1  # the sweep purges with the setting's retention


def logged(query: str, hits: int, clicks: list[int], *, found_by: str = "vf", days_ago: int = 0,
           session: str = "s1") -> SearchRecord:
    row = SearchRecord.objects.create(
        id=uuid.uuid4(), created_at=timezone.now() - timedelta(days=days_ago),
        content_type=ContentType.objects.get_for_model(Product), query=query, hits=hits,
        results=[str(i) for i in range(1, hits + 1)], found_by=[found_by] * hits, session=session)
    for position in clicks:
        SearchEvent.objects.create(search=row, kind="click", object_pk=str(position), position=position,
                                   created_at=row.created_at)
    return row


def test_analytics_count_ctr_mrr_and_the_legs_of_clicks(db):
    logged("red mug", 10, [1], found_by="vf")
    logged("Red Mug", 10, [2, 5], found_by="v")  # the same query, another case
    logged("red mug", 10, [], session="s2")
    logged("xqzvbl", 0, [])
    logged("lamp", 4, [4], found_by="k", days_ago=2)
    period = analytics.Period.last(7)
    top = {row.query: row for row in analytics.top_queries(period)}
    mug = top["red mug"]
    assert (mug.searches, mug.clicks, mug.zero_results) == (3, 3, 0)
    assert mug.ctr == pytest.approx(2 / 3) and mug.mrr == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert [row.query for row in analytics.top_queries(period, zero_only=True)] == ["xqzvbl"]
    totals = analytics.summary(period)
    assert (totals["searches"], totals["sessions"], totals["events"]) == (5, 2, {"click": 4})
    assert totals["zero_rate"] == pytest.approx(0.2) and totals["ctr"] == pytest.approx(3 / 5)
    assert dict(analytics.clicked_by_leg(period)) == {"vector + full text": 1, "vector": 2, "keyword": 1}
    days = analytics.daily(period)
    assert len(days) == 7 and sum(day["searches"] for day in days) == 5
    assert days[-1]["searches"] == 4 and days[-3]["searches"] == 1 and days[-3]["ctr"] == 1.0
    assert analytics.top_queries(analytics.Period.last(1))[0].searches == 3  # the lamp was 2 days ago


def test_the_analytics_page_renders_escaped_and_filters_by_date(db, admin_client):
    logged("<script>alert(1)</script>", 3, [1])
    logged("lamp", 4, [4], days_ago=10)
    page = admin_client.get(reverse("admin:clip_search_searchrecord_analytics"))
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("<svg") >= 3 and "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "lamp" in html
    today = timezone.localdate().isoformat()
    page_url = reverse("admin:clip_search_searchrecord_analytics")
    narrowed = admin_client.get(page_url, {"from": today, "to": today})
    assert "lamp" not in narrowed.content.decode()
    bad = admin_client.get(reverse("admin:clip_search_searchrecord_analytics"), {"from": "yesterday"})
    assert bad.status_code == 200 and "is not a date" in bad.content.decode()
    changelist = admin_client.get(reverse("admin:clip_search_searchrecord_changelist"))
    assert changelist.status_code == 200 and b"Analytics" in changelist.content


def test_staff_without_the_view_permission_see_no_analytics(db, client, django_user_model):
    client.force_login(django_user_model.objects.create_user("staff", password="x", is_staff=True))
    assert client.get(reverse("admin:clip_search_searchrecord_analytics")).status_code == 403
