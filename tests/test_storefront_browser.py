"""A shopper uses the demo storefront (/) in a real browser (Debian chromium) over the REST API.

The search lives in the page's URL: a deep link renders its results, Back and Forward restore
earlier searches, facets narrow and chips undo them, the words are corrected and suggested, and
the page works at 390 px. What the page shows is checked against the API's own answers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.cache import cache
from django.db import connection, connections
from django.test.testcases import LiveServerThread
from playwright.sync_api import Page

from shop_demo.catalog.generator import generate_catalog
from tests.catalog import embedded_catalog
from tests.conftest import assert_not_blank

# django_db: the session then sets up the test database (pytest-django sets up only the databases
# its collected tests ask for; without this mark, run alone, the module would use the real one).
pytestmark = [pytest.mark.browser, pytest.mark.django_db]

# Screenshots for people to look at (gitignored), besides the test's own tmp dir.
REVIEW_DIR = Path(__file__).resolve().parent.parent / "test-output"
# Words a shopper must never read: the software behind the search, or a Python error.
FORBIDDEN = ("clip_search", "clip-search", "pillow", "pgvector", "traceback", "clip ")


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """A small drawn catalog, embedded, its lexicon built and the encoder calibrated as
    clip_reindex does (so nonsense finds nothing), committed so the live server sees it."""
    assert connection.settings_dict["NAME"].startswith("test_"), "never the shop's own database"
    with django_db_blocker.unblock(), \
            embedded_catalog(generate_catalog(48, seed=31), tmp_path_factory.mktemp("media"),
                             django_db_blocker, calibrate=True) as rows:
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


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def storefront(chromium, shop_url, path: str = "/", *, width: int = 1280, height: int = 960
               ) -> Iterator[Page]:
    """A fresh browser context on the page; no 5xx, no script error and no forbidden word
    by the end (the throttles start afresh)."""
    cache.clear()
    context = chromium.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    problems: list[str] = []
    page.on("response", lambda response: response.status >= 500 and problems.append(response.url))
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    try:
        if path is not None:
            page.goto(f"{shop_url}{path}")
            settle(page)
        yield page
        assert_shopper_text(page)
    finally:
        context.close()
    assert not problems


def settle(page: Page, status: str | None = None) -> None:
    """Wait for the search just started (the page is busy from the event on) to be shown."""
    page.locator("#storefront[aria-busy='false']").wait_for()
    if status is not None:
        page.locator("#status", has_text=status).wait_for()


def navigate(page: Page, action, *, q: str | None = None) -> dict:
    """Do what starts a search (of these words, if given); the API's answer the page got,
    once the page shows it."""
    def wanted(response) -> bool:
        return "/api/v1/search/" in response.url and (
            q is None or parse_qs(urlsplit(response.url).query).get("q") == [q])

    with page.expect_response(wanted) as answer:
        action()
    settle(page)
    return answer.value.json()


def search_for(page: Page, words: str) -> dict:
    """Type the words and press Enter; the API's answer the page got."""
    page.fill("#q", words)
    return navigate(page, lambda: page.press("#q", "Enter"), q=words)


def api(page: Page, shop_url, path: str, params: list[tuple[str, str]] | dict) -> dict:
    """The API's own answer (as the page would ask it: highlighted, a page of 24)."""
    response = page.request.get(f"{shop_url}/api/v1/{path}?{urlencode(params, doseq=True)}")
    assert response.ok, response.text()
    return response.json()


def search_api(page: Page, shop_url, **params) -> dict:
    return api(page, shop_url, "search/", {"highlight": "1", "limit": "24", **params})


def suggestions(page: Page, shop_url: str, q: str) -> list[dict]:
    return api(page, shop_url, "suggest/", {"q": q, "limit": "8"})["suggestions"]


def card_skus(page: Page) -> list[str]:
    return page.locator("#grid .card").evaluate_all("cards => cards.map(card => card.dataset.sku)")


def skus(answer: dict) -> list[str]:
    return [result["sku"] for result in answer["results"]]


def shown_facets(page: Page) -> dict[str, list[tuple[str, int, bool]]]:
    """{facet: [(value, count, checked), ...]} as the sidebar shows them."""
    return page.locator("#facets fieldset").evaluate_all("""groups => Object.fromEntries(groups.map(
        group => [group.dataset.facet, [...group.querySelectorAll("li")].map(item => [
            item.querySelector("input").value,
            Number(item.querySelector(".count").textContent),
            item.querySelector("input").checked])]))""")


def api_facets(answer: dict) -> dict[str, list[tuple[str, int, bool]]]:
    return {facet["name"]: [[value["value"], value["count"], value["selected"]] for value in facet["values"]]
            for facet in answer["facets"] if facet["values"]}


def chip_texts(page: Page) -> list[str]:
    return [text.replace("×", "").strip() for text in page.locator("#chip-list .chip").all_inner_texts()]


def url_params(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def facet_box(page: Page, facet: str, value: str):
    return page.locator(f"#facets fieldset[data-facet='{facet}'] input[value='{value}']")


def assert_shopper_text(page: Page) -> None:
    text = page.locator("body").inner_text().lower()
    strings = page.locator("#storefront-strings").text_content().lower()
    for word in FORBIDDEN:
        assert word not in text, f"the page shows {word!r}"
        assert word not in strings, f"the page's strings name {word!r}"


def screenshot(page: Page, tmp_path: Path, name: str, **options) -> Path:
    """Saved under the test's tmp dir and copied to test-output/ for review."""
    path = tmp_path / name
    page.screenshot(path=str(path), **options)
    assert_not_blank(path)
    REVIEW_DIR.mkdir(exist_ok=True)
    shutil.copy(path, REVIEW_DIR / name)
    return path


# --------------------------------------------------------------------------- the tests


def test_a_shopper_searches_by_sku_picture_and_more_like_this(catalog, shop_url, chromium, tmp_path):
    # Tests run with DEBUG off, as the demo now does by default: the thumbnails below load from
    # the shop's own (demo-only) media route, the CSS and JS from the live server's static handler.
    spec, product = catalog[4]
    with storefront(chromium, shop_url) as page:
        page.locator(".home-title", has_text="Search the catalog").wait_for()

        # Words: an exact SKU puts its product first.
        search_for(page, spec.sku)
        page.locator("#status", has_text=f"for “{spec.sku}”").wait_for()
        first = page.locator("#grid .card").first
        assert first.locator(".title").inner_text() == product.title
        assert first.locator(".brand-name").inner_text() == product.brand.name
        assert first.locator(".price").inner_text().replace("\u00a0", "").endswith(f"{product.price}")
        first.locator("img").evaluate("img => img.decode()")  # the thumbnail really loads
        assert first.locator("img").evaluate("img => img.naturalWidth") > 0
        assert facet_box(page, "category", spec.category).is_visible()  # its category, counted

        # The shopper's own price range re-runs the search: nothing costs 0 (the empty state), then
        # without it the product is back.
        page.fill("#max-price", "0")
        page.dispatch_event("#max-price", "change")
        settle(page)
        assert page.locator("#empty").is_visible() and card_skus(page) == []
        assert url_params(page)["max_price"] == ["0"]
        assert chip_texts(page) == ["Up to €0.00"]
        page.fill("#max-price", "")
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
        assert "picture" in url_params(page)

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
        pictured = card_skus(page)

        # More like this: the product's neighbours, itself excluded; its URL names the product.
        page.locator(f"#grid .card[data-sku='{spec.sku}'] .like").click()
        settle(page, f"like “{product.title}”")
        neighbours = card_skus(page)
        assert neighbours and spec.sku not in neighbours
        assert url_params(page)["like"] == [str(product.pk)]
        shot = screenshot(page, tmp_path, "storefront.png", full_page=True)

        # Back shows the picture's results again (the picture is still in the page), Forward
        # the neighbours; a reload cannot bring a picture back and says so.
        page.go_back()
        settle(page, "for your picture")
        assert card_skus(page) == pictured and page.locator("#image-preview").is_visible()
        page.go_forward()
        settle(page, f"like “{product.title}”")
        assert card_skus(page) == neighbours
        page.go_back()
        settle(page, "for your picture")
        page.reload()
        settle(page, "Choose your picture again")
        assert card_skus(page) == []

        # An API error is shown to the shopper in the shop's words, never the API's own message.
        page.route("**/api/v1/search/**", lambda route: route.fulfill(
            status=429, content_type="application/json", body=json.dumps({"error": {
                "code": "throttled", "message": "clip_search throttled you (Pillow)", "detail": None}})))
        page.fill("#q", "red mug")
        page.press("#q", "Enter")
        page.locator("#error", has_text="Too many searches").wait_for()
    assert_not_blank(shot)
