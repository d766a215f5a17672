"""The admin staff use, as a staff user with the test client, on a real embedded catalog.

Asserts lean only on what any model gets right (an exact SKU, an identical picture), not
on the model's quality, so they hold for the under-trained quick model too.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from clip_search import encoders, moderation
from clip_search.models import Embedding, EncoderModel, ReviewDecision, ReviewItem
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.broker import free_port, producer
from tests.catalog import embedded_catalog, quarantine

CATALOG_SIZE = 40
CHANGELIST = "admin:catalog_product_changelist"
REVIEW_CHANGELIST = "admin:clip_search_reviewitem_changelist"

Status = Embedding.Status


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """40 drawn products, embedded once for the module."""
    specs = generate_catalog(CATALOG_SIZE, seed=2025)
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker) as products:
        yield products


@pytest.fixture
def safe(catalog, db):
    return [(spec, product) for spec, product in catalog if not spec.is_unsafe]


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("staff", "staff@example.com", "pw")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


def message_texts(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def product_url(name: str, product: Product) -> str:
    return reverse(f"admin:catalog_product_{name}", args=[product.pk])


def png(product: Product) -> bytes:
    with product.image.open("rb") as handle:
        return handle.read()


# --------------------------------------------------------------------------- changelist


def test_changelist_search_puts_the_searched_sku_first_in_score_order(staff_client, safe):
    spec, product = safe[5]
    response = staff_client.get(reverse(CHANGELIST), {"q": spec.sku})
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert rows[0].pk == product.pk and rows[0].keyword_exact
    scores = [row.search_score for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert [row.search_rank for row in rows] == list(range(1, len(rows) + 1))
    html = response.content.decode()
    assert "column-clip_score" in html and "column-clip_status" in html
    assert f'{product_url("clip_explain", product)}?q={spec.sku}' in html


def test_a_clicked_column_orders_the_search_results(staff_client, safe):
    hits = staff_client.get(reverse(CHANGELIST), {"q": "mug"}).context["cl"]
    price_column = hits.list_display.index("price")
    response = staff_client.get(reverse(CHANGELIST), {"q": "mug", "o": str(price_column)})
    rows = list(response.context["cl"].result_list)
    assert {row.pk for row in rows} == {row.pk for row in hits.result_list}
    assert [row.price for row in rows] == sorted(row.price for row in rows)


def test_status_and_thumbnail_columns_render_without_a_query_per_row(staff_client, catalog):
    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == CATALOG_SIZE
    assert len(queries) < 15, [q["sql"][:120] for q in queries]
    html = response.content.decode()
    assert html.count('class="clip-status clip-status-') == CATALOG_SIZE
    assert 'class="clip-status clip-status-indexed"' in html
    spec, product = catalog[0]
    assert f'src="{product.image.url}"' in html
    assert "Search by image" in html


def test_an_error_row_shows_its_error_as_the_badge_title(staff_client, catalog):
    spec, product = catalog[1]
    Embedding.objects.filter(object_pk=str(product.pk)).update(
        status=Status.ERROR, error="broken: truncated PNG")
    html = staff_client.get(reverse(CHANGELIST), {"q": spec.sku}).content.decode()
    assert 'class="clip-status clip-status-error" title="broken: truncated PNG"' in html


def test_degraded_search_says_so_and_the_keyword_legs_still_answer(staff_client, safe):
    spec, product = safe[2]
    EncoderModel.objects.filter(is_active=True).update(name="local-dir:/nonexistent/clip-model")
    encoders.reset()
    try:
        response = staff_client.get(reverse(CHANGELIST), {"q": spec.sku})
    finally:
        encoders.reset()
    assert next(iter(response.context["cl"].result_list)).pk == product.pk
    assert any("Search is degraded" in text for text in message_texts(response))


def test_with_nothing_indexed_the_plain_admin_search_answers(staff_client, safe):
    spec, product = safe[3]
    EncoderModel.objects.update(is_active=False)
    response = staff_client.get(reverse(CHANGELIST), {"q": spec.sku})
    assert [row.pk for row in response.context["cl"].result_list] == [product.pk]
    assert any("plain admin search" in text for text in message_texts(response))


# --------------------------------------------------------------------------- image, similar, explain


def test_image_search_finds_the_product_of_the_same_picture(staff_client, safe):
    spec, product = safe[4]
    url = reverse("admin:catalog_product_clip_image_search")
    assert staff_client.get(url).status_code == 200
    upload = SimpleUploadedFile("query.png", png(product), content_type="image/png")
    response = staff_client.post(url, {"image": upload})
    assert response.status_code == 200
    rows = response.context["rows"]
    assert rows[0]["obj"].pk == product.pk and rows[0]["hit"].vector_rank == 1
    assert response.content.decode().count('class="clip-result"') == len(rows) > 1


def test_a_file_that_is_not_an_image_is_a_form_error_not_a_500(staff_client, catalog):
    url = reverse("admin:catalog_product_clip_image_search")
    upload = SimpleUploadedFile("notes.png", b"this is not a picture", content_type="image/png")
    response = staff_client.post(url, {"image": upload})
    assert response.status_code == 200
    assert response.context["form"].errors["image"]
    assert "rows" not in response.context
    assert 'class="errorlist' in response.content.decode()


def test_similar_excludes_the_product_itself(staff_client, safe):
    spec, product = safe[6]
    response = staff_client.get(product_url("clip_similar", product))
    assert response.status_code == 200
    pks = [row["obj"].pk for row in response.context["rows"]]
    assert pks and product.pk not in pks


def test_explain_shows_each_legs_rank_for_a_query(staff_client, safe):
    spec, product = safe[7]
    response = staff_client.get(product_url("clip_explain", product), {"q": spec.sku})
    assert response.status_code == 200
    context = response.context
    assert context["position"] == 1 and context["exact"]
    assert context["explanation"]["keyword"]["rank"] == 1 and context["explanation"]["keyword"]["exact"]
    legs = {str(leg["label"]): leg for leg in context["legs"]}
    assert legs["keyword (SKU, brand)"]["rank"] == 1 and legs["CLIP vector"]["ran"]
    html = response.content.decode()
    assert "Fused score" in html and "cosine distance" in html and "#1" in html


def test_unknown_product_pages_redirect_with_a_message(staff_client, catalog):
    response = staff_client.get(reverse("admin:catalog_product_clip_similar", args=[987654321]))
    assert response.status_code == 302


# --------------------------------------------------------------------------- re-embed action


@contextlib.contextmanager
def filesystem_broker(folder: Path) -> Iterator[Path]:
    """The demo's own broker transport (files), in a folder of this test's."""
    from kombu import pools

    from shop_demo.celery import app

    folders = {name: folder / name for name in ("queue", "processed", "control")}
    for path in folders.values():
        path.mkdir(parents=True)
    previous = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport_options = {
        "data_folder_in": str(folders["queue"]), "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]), "control_folder": str(folders["control"])}
    pools.reset()
    app._after_fork()
    try:
        yield folders["queue"]
    finally:
        pools.reset()
        app._after_fork()
        app.conf.broker_url, app.conf.broker_transport_options = previous


def queued_tasks(queue: Path) -> list[tuple[str, list]]:
    tasks = []
    for message_file in sorted(queue.iterdir()):
        message = json.loads(message_file.read_text())
        tasks.append((message["headers"]["task"], json.loads(base64.b64decode(message["body"]))[0]))
    return tasks


def reembed(client, products):
    return client.post(reverse(CHANGELIST), {
        "action": "clip_reembed", "_selected_action": [p.pk for p in products]}, follow=True)


def test_reembed_queues_a_forced_embed_task(staff_client, catalog, tmp_path):
    products = [product for _, product in catalog[:3]]
    with filesystem_broker(tmp_path / "broker") as queue:
        response = reembed(staff_client, products)
    assert "Queued 3 products for re-embedding" in response.content.decode()
    [(task, args)] = queued_tasks(queue)
    assert task == "clip_search.embed_batch"
    assert args == ["catalog.product", sorted(str(p.pk) for p in products), None, True]


def test_reembed_with_the_broker_down_marks_rows_stale_and_warns(staff_client, catalog):
    products = [product for _, product in catalog[3:5]]
    with producer(f"redis://127.0.0.1:{free_port()}/0"):
        response = reembed(staff_client, products)
    assert "marked stale" in response.content.decode()
    rows = Embedding.objects.filter(object_pk__in=[str(p.pk) for p in products])
    assert rows.count() == 2 and all(row.stale for row in rows)


# --------------------------------------------------------------------------- review queue


@pytest.fixture
def review_items(catalog, db):
    """Three open reviews of real embedded rows (flagged as moderation would) and one decided."""
    items = []
    for row in Embedding.objects.filter(status=Status.INDEXED).order_by("pk")[:4]:
        items.append(quarantine(row, {"weapons": 0.91}))
    moderation.approve(items[0], user=None, note="decided before")
    return items


def test_the_review_queue_lists_open_items_first_with_previews(staff_client, review_items):
    response = staff_client.get(reverse(REVIEW_CHANGELIST))
    assert response.status_code == 200
    listed = list(response.context["cl"].result_list)
    statuses = [item.status for item in listed]
    assert statuses == sorted(statuses, key=lambda status: status != ReviewItem.Status.OPEN)
    assert {item.pk for item in review_items} <= {item.pk for item in listed}
    html = response.content.decode()
    product = Product.objects.get(pk=review_items[1].embedding.object_pk)
    assert f'src="{product.image.url}"' in html and "weapons: 0.910" in html


def decide(client, action, items):
    return client.post(reverse(REVIEW_CHANGELIST), {
        "action": action, "_selected_action": [item.pk for item in items]}, follow=True)


def test_approve_selected_records_the_staff_user_and_skips_decided_items(staff_client, staff, review_items):
    response = decide(staff_client, "approve_selected", review_items[:3])
    assert response.status_code == 200
    html = response.content.decode()
    assert "2 uploads approved" in html and "1 selected upload was already decided" in html
    for item in review_items[1:3]:
        item.refresh_from_db()
        assert item.status == ReviewItem.Status.APPROVED
        assert item.embedding.status == Status.INDEXED
        decision = item.decisions.get(decision=ReviewDecision.Decision.APPROVED)
        assert (decision.user, decision.username) == (staff, "staff")


def test_reject_selected_keeps_the_products_out_of_search(staff_client, staff, review_items):
    decide(staff_client, "reject_selected", review_items[2:])
    for item in review_items[2:]:
        item.refresh_from_db()
        assert item.status == ReviewItem.Status.REJECTED
        assert Embedding.objects.get(pk=item.embedding_id).status == Status.REJECTED
        assert item.decisions.get(decision=ReviewDecision.Decision.REJECTED).user == staff


def test_the_change_page_shows_the_audit_trail_and_records_a_decision_with_a_note(
        staff_client, staff, review_items):
    item = review_items[1]
    url = reverse("admin:clip_search_reviewitem_change", args=[item.pk])
    response = staff_client.get(url)
    html = response.content.decode()
    assert response.status_code == 200 and "audit trail" in html.lower()
    assert "moderation (automatic)" in html and 'name="decision"' in html
    formset = response.context["inline_admin_formsets"][0].formset
    data = {f"{formset.prefix}-{key}": value for key, value in formset.management_form.initial.items()}
    response = staff_client.post(url, {**data, "decision": "reject", "note": "a real knife"}, follow=True)
    assert response.status_code == 200
    decision = ReviewItem.objects.get(pk=item.pk).decisions.get(decision=ReviewDecision.Decision.REJECTED)
    assert (decision.user, decision.note) == (staff, "a real knife")
    decided = staff_client.get(url).content.decode()
    assert "a real knife" in decided and 'name="decision"' not in decided


def test_embedding_and_encoder_admins_are_read_only(staff_client, catalog):
    response = staff_client.get(reverse("admin:clip_search_embedding_changelist"), {"status": "indexed"})
    assert response.status_code == 200 and "clip-status-indexed" in response.content.decode()
    row = Embedding.objects.first()
    change = staff_client.get(reverse("admin:clip_search_embedding_change", args=[row.pk]))
    assert change.status_code == 200 and 'name="status"' not in change.content.decode()
    encoders_page = staff_client.get(reverse("admin:clip_search_encodermodel_changelist"))
    assert encoders_page.status_code == 200
    assert staff_client.get(reverse("admin:clip_search_encodermodel_add")).status_code == 403


# --------------------------------------------------------------------------- who may


def test_non_staff_users_are_sent_to_the_login_page(client, catalog, db):
    user = get_user_model().objects.create_user("customer", password="pw")
    client.force_login(user)
    _, product = catalog[0]
    for url in (reverse(CHANGELIST), reverse("admin:catalog_product_clip_image_search"),
                product_url("clip_similar", product), product_url("clip_explain", product),
                reverse(REVIEW_CHANGELIST)):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("admin:login")), url


def test_view_only_staff_may_search_but_not_reembed(client, catalog, db, tmp_path):
    user = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(user)
    _, product = catalog[0]
    assert client.get(reverse("admin:catalog_product_clip_image_search")).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_product"))
    assert client.get(reverse("admin:catalog_product_clip_image_search")).status_code == 200
    action_form = client.get(reverse(CHANGELIST)).context["action_form"]
    assert action_form is None or "clip_reembed" not in dict(action_form.fields["action"].choices)
    with filesystem_broker(tmp_path / "broker") as queue:
        reembed(client, [product])
    assert queued_tasks(queue) == []


def test_reembed_needs_the_products_change_permission(client, catalog, db, tmp_path):
    user = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)
    _, product = catalog[0]
    with filesystem_broker(tmp_path / "broker") as queue:
        assert reembed(client, [product]).status_code == 403  # no permission on products at all
        user.user_permissions.add(Permission.objects.get(codename="view_product"))
        action_form = client.get(reverse(CHANGELIST)).context["action_form"]
        assert action_form is None or "clip_reembed" not in dict(action_form.fields["action"].choices)
        assert reembed(client, [product]).status_code == 200  # the list again, nothing done
        assert queued_tasks(queue) == []
        user.user_permissions.add(Permission.objects.get(codename="change_product"))
        action_form = client.get(reverse(CHANGELIST)).context["action_form"]
        assert "clip_reembed" in dict(action_form.fields["action"].choices)
        assert "Queued 1 product for re-embedding" in reembed(client, [product]).content.decode()
        assert [args for _, args in queued_tasks(queue)] == [
            ["catalog.product", [str(product.pk)], None, True]]


def test_the_review_admin_refuses_staff_without_the_change_permission(client, review_items):
    """Django's admin checks the model permissions: the queue's actions and its change form too."""
    item = review_items[1]  # open
    change = reverse("admin:clip_search_reviewitem_change", args=[item.pk])
    user = get_user_model().objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)

    def still_open() -> None:
        item.refresh_from_db()
        assert item.status == ReviewItem.Status.OPEN and item.embedding.status == Status.FLAGGED
        assert list(item.decisions.values_list("decision", flat=True)) == [ReviewDecision.Decision.FLAGGED]

    # No permission at all: neither the queue nor the item.
    assert client.get(reverse(REVIEW_CHANGELIST)).status_code == 403
    for action in ("approve_selected", "reject_selected"):
        assert decide(client, action, [item]).status_code == 403
    assert client.get(change).status_code == 403
    assert client.post(change, {"decision": "approve", "note": "let me"}).status_code == 403
    still_open()

    # View only: both are shown, without the actions or the decision, and a decision is refused.
    user.user_permissions.add(Permission.objects.get(codename="view_reviewitem"))
    response = client.get(reverse(REVIEW_CHANGELIST))
    assert response.status_code == 200 and response.context["action_form"] is None
    for action in ("approve_selected", "reject_selected"):
        response = decide(client, action, [item])
        assert response.status_code == 200 and "uploads approved" not in response.content.decode()
    page = client.get(change)
    assert page.status_code == 200 and 'name="decision"' not in page.content.decode()
    assert client.post(change, {"decision": "approve", "note": "let me"}).status_code == 403
    still_open()

    # With change, the same requests decide.
    user.user_permissions.add(Permission.objects.get(codename="change_reviewitem"))
    assert "1 upload approved" in decide(client, "approve_selected", [item]).content.decode()
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.APPROVED
    assert item.decisions.get(decision=ReviewDecision.Decision.APPROVED).user == user

