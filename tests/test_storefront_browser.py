"""A shopper uses the demo storefront (/) in a real browser (Debian chromium) over the REST API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.cache import cache
from django.db import connection, connections
from django.test.testcases import LiveServerThread
from playwright.sync_api import Page

from shop_demo.catalog.generator import CATEGORY_LABELS, generate_catalog
from tests.catalog import embedded_catalog
from tests.conftest import assert_not_blank

# django_db: the session then sets up the test database (pytest-django sets up only the databases
# its collected tests ask for; without this mark, run alone, the module would use the real one).
pytestmark = [pytest.mark.browser, pytest.mark.django_db]


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """A small drawn catalog, embedded and committed so the live server sees it."""
    assert connection.settings_dict["NAME"].startswith("test_"), "never the shop's own database"
    with django_db_blocker.unblock(), \
            embedded_catalog(generate_catalog(48, seed=31), tmp_path_factory.mktemp("media"),
                             django_db_blocker) as rows:
        yield [(spec, product) for spec, product in rows if spec.is_public and not spec.is_unsafe]
    # Playwright's sync API keeps an event loop running in this thread, and then Django keeps
    # the thread's connections per async context (asgiref's Local): the ones opened since it
    # started would outlive the test database (and block dropping it) unless closed here.
    connections.close_all()


@pytest.fixture(scope="module")
def shop_url(catalog, django_db_blocker) -> Iterator[str]:
    """One live server (Django's threaded LiveServerThread, static files served) for the
    module's tests. Not pytest-django's ``live_server``: that one makes each test transactional,
    and the flush after the first test would empty the module's catalog."""
    thread = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
    thread.daemon = True
    with django_db_blocker.unblock():
        thread.start()
        thread.is_ready.wait()
        if thread.error:
            raise thread.error
        try:
            yield f"http://127.0.0.1:{thread.port}"
        finally:
            thread.terminate()


def card_skus(page: Page) -> list[str]:
    return page.locator("#grid .card").evaluate_all("cards => cards.map(card => card.dataset.sku)")


def settle(page: Page, status: str | None = None) -> None:
    """Wait for the search just started (the page is busy from the event on) to be shown."""
    page.locator("#storefront[aria-busy='false']").wait_for()
    if status is not None:
        page.locator("#status", has_text=status).wait_for()


def test_a_shopper_searches_by_sku_picture_and_more_like_this(catalog, shop_url, chromium, tmp_path):
    # Tests run with DEBUG off, as the demo now does by default: the thumbnails below load from
    # the shop's own (demo-only) media route, the CSS and JS from the live server's static handler.
    cache.clear()  # fresh throttles
    spec, product = catalog[4]
    context = chromium.new_context(viewport={"width": 1280, "height": 960})
    page = context.new_page()
    server_errors = []
    page.on("response", lambda response: response.status >= 500 and server_errors.append(response.url))
    try:
        page.goto(f"{shop_url}/")
        page.locator("#status", has_text="Search the catalog").wait_for()

        # Words: an exact SKU puts its product first.
        page.fill("#q", spec.sku)
        page.press("#q", "Enter")
        settle(page, f"for “{spec.sku}”")
        first = page.locator("#grid .card").first
        assert first.locator(".title").inner_text() == product.title
        assert first.locator(".brand-name").inner_text() == product.brand.name
        assert first.locator(".price").inner_text().replace("\u00a0", "").endswith(f"{product.price}")
        first.locator("img").evaluate("img => img.decode()")  # the thumbnail really loads
        assert first.locator("img").evaluate("img => img.naturalWidth") > 0

        # Filters re-run the search: another category, then a price no product has.
        other = next(s.category for s, _ in catalog if s.category != spec.category)
        page.select_option("#category", other)
        settle(page, f"for “{spec.sku}”")
        assert spec.sku not in card_skus(page)
        assert set(page.locator("#grid .card").evaluate_all(
            "cards => cards.map(card => card.dataset.category)")) == {CATEGORY_LABELS[other]}
        page.fill("#max-price", "0")
        page.dispatch_event("#max-price", "change")
        settle(page)
        assert page.locator("#empty").is_visible() and card_skus(page) == []  # the empty state
        page.fill("#max-price", "")
        page.select_option("#category", "")
        page.dispatch_event("#max-price", "change")
        settle(page)
        assert card_skus(page)[0] == spec.sku

        # A picture: the product's own photo finds it among the first hits.
        with product.image.open("rb") as handle:
            picture = handle.read()
        page.fill("#q", "")
        page.set_input_files("#image-input", files=[
            {"name": "photo.png", "mimeType": "image/png", "buffer": picture}])
        settle(page, "for your picture")
        assert product.sku in card_skus(page)[:3]
        assert page.locator("#image-preview").is_visible()

        # Or dragged onto the drop zone.
        dragged_spec, dragged = catalog[9]
        with dragged.image.open("rb") as handle:
            encoded = base64.b64encode(handle.read()).decode()
        files = page.evaluate_handle("""encoded => {
            const bytes = Uint8Array.from(atob(encoded), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dragged.png", {type: "image/png"}));
            return transfer;
        }""", encoded)
        page.dispatch_event("#dropzone", "dragenter", {"dataTransfer": files})
        page.dispatch_event("#dropzone", "drop", {"dataTransfer": files})
        settle(page, "for your picture")
        assert dragged_spec.sku in card_skus(page)[:3]
        page.set_input_files("#image-input", files=[
            {"name": "photo.png", "mimeType": "image/png", "buffer": picture}])
        settle(page, "for your picture")

        # More like this: the product's neighbours, itself excluded.
        page.locator(f"#grid .card[data-sku='{spec.sku}'] .like").click()
        settle(page, f"like “{product.title}”")
        neighbours = card_skus(page)
        assert neighbours and spec.sku not in neighbours
        screenshot = tmp_path / "storefront.png"
        page.screenshot(path=str(screenshot), full_page=True)

        # An API error is shown to the shopper, not swallowed.
        page.route("**/api/v1/search/**", lambda route: route.fulfill(
            status=429, content_type="application/json", body=json.dumps({"error": {
                "code": "throttled", "message": "Too many searches, wait a minute.", "detail": None}})))
        page.fill("#q", "red mug")
        page.press("#q", "Enter")
        page.locator("#error", has_text="Too many searches").wait_for()
    finally:
        context.close()
    assert not server_errors
    assert_not_blank(screenshot)
