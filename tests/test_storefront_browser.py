"""A shopper uses the demo storefront (/) in a real browser (Debian chromium) over the REST API.

The search lives in the page's URL: a deep link renders its results, Back and Forward restore
earlier searches, facets narrow and chips undo them, the words are corrected and suggested, and
the page works at 390 px. What the page shows is checked against the API's own answers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.cache import cache
from django.db import connection, connections
from django.test.testcases import LiveServerThread
from playwright.sync_api import Page, Route, expect

from clip_search.models import SearchEvent, SearchRecord
from shop_demo.catalog import shoppers
from shop_demo.catalog.generator import generate_catalog
from tests.catalog import embedded_catalog
from tests.conftest import assert_not_blank, empty_the_search_log

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
def storefront(chromium, shop_url: str, path: str = "/", *, width: int = 1280, height: int = 960
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


def api(page: Page, shop_url: str, path: str, params: dict) -> dict:
    """The API's own answer, asked directly (repeated parameters as lists)."""
    response = page.request.get(f"{shop_url}/api/v1/{path}?{urlencode(params, doseq=True)}")
    assert response.ok, response.text()
    return response.json()


def search_api(page: Page, shop_url: str, **params) -> dict:
    """A search as the page asks it: highlighted, a page of 24."""
    return api(page, shop_url, "search/", {"highlight": "1", "limit": "24", **params})


def suggestions(page: Page, shop_url: str, q: str) -> list[dict]:
    return api(page, shop_url, "suggest/", {"q": q, "limit": "8"})["suggestions"]


def card_skus(page: Page) -> list[str]:
    return page.locator("#grid .card").evaluate_all("cards => cards.map(card => card.dataset.sku)")


def skus(answer: dict) -> list[str]:
    return [result["sku"] for result in answer["results"]]


def shown_facets(page: Page) -> dict[str, list[list]]:
    """{facet: [[value, count, checked], ...]} as the sidebar shows them."""
    return page.locator("#facets fieldset").evaluate_all("""groups => Object.fromEntries(groups.map(
        group => [group.dataset.facet, [...group.querySelectorAll("li")].map(item => [
            item.querySelector("input").value,
            Number(item.querySelector(".count").textContent),
            item.querySelector("input").checked])]))""")


def api_facets(answer: dict) -> dict[str, list[list]]:
    """The same from the API's answer: its values in its order, with their counts."""
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


def test_a_deep_link_renders_its_results(catalog, shop_url, chromium):
    with storefront(chromium, shop_url, None) as page:
        # A category among the hits of "greystone", and the link a shopper would share.
        broad = search_api(page, shop_url, q="greystone")
        category = next(facet for facet in broad["facets"] if facet["name"] == "category")
        chosen = next(value for value in category["values"] if value["count"] >= 2)
        link = f"/?{urlencode({'q': 'greystone', 'category': chosen['value'], 'sort': 'price'})}"
        expected = search_api(page, shop_url, q="greystone", category=chosen["value"], sort="price")
        assert expected["count"] == chosen["count"] >= 2

        # The page's HTML already holds the words and says it is searching (no welcome flash).
        html = page.request.get(f"{shop_url}{link}").text()
        assert 'value="greystone"' in html and 'aria-busy="true"' in html

        page.goto(f"{shop_url}{link}")
        settle(page, f"{expected['count']} results for “greystone”")
        assert card_skus(page) == skus(expected)  # the API's hits, in price order
        prices = [float(result["price"]) for result in expected["results"]]
        assert prices == sorted(prices)
        assert page.input_value("#q") == "greystone"
        assert page.input_value("#sort") == "price"
        assert facet_box(page, "category", chosen["value"]).is_checked()
        assert chip_texts(page) == [f"Category: {chosen['label']}"]
        assert shown_facets(page) == api_facets(expected)
        assert page.title() == "“greystone” – Demo shop"
        # Titles carry the API's highlight: the searched word marked, and nothing else as markup.
        assert page.locator("#grid .card .title mark").count() >= 1
        assert page.locator("#grid .card .title *:not(mark)").count() == 0


def test_pages_live_in_the_url(catalog, shop_url, chromium, monkeypatch):
    monkeypatch.setattr("shop_demo.storefront.views.PAGE_SIZE", 3)
    with storefront(chromium, shop_url, "/?q=greystone") as page:
        every = search_api(page, shop_url, q="greystone", limit="3")
        assert every["count"] > 6, "three pages of three are needed"
        assert page.locator("#page-of").inner_text() == f"Page 1 of {-(-every['count'] // 3)}"
        assert card_skus(page) == skus(every)

        navigate(page, lambda: page.click("#next"))
        assert url_params(page)["page"] == ["2"]
        assert card_skus(page) == skus(search_api(page, shop_url, q="greystone", limit="3", offset="3"))

        navigate(page, lambda: page.goto(f"{shop_url}/?q=greystone&page=3"))  # a deep link
        assert card_skus(page) == skus(search_api(page, shop_url, q="greystone", limit="3", offset="6"))
        assert page.locator("#page-of").inner_text().startswith("Page 3 of")
        navigate(page, page.go_back)
        assert url_params(page)["page"] == ["2"]

        # A new facet choice starts again from page 1.
        navigate(page, lambda: facet_box(page, "in_stock", "true").check())
        assert "page" not in url_params(page)


def test_back_and_forward_restore_searches(catalog, shop_url, chromium):
    with storefront(chromium, shop_url) as page:
        home = page.url
        seen = []

        def remember() -> None:
            seen.append({"url": page.url, "q": page.input_value("#q"), "skus": card_skus(page),
                         "status": page.locator("#status").inner_text(), "facets": shown_facets(page)})

        def assert_shows(entry: dict) -> None:
            assert page.locator("#status").inner_text() == entry["status"]
            assert page.url == entry["url"]
            assert page.input_value("#q") == entry["q"]
            assert card_skus(page) == entry["skus"]
            assert shown_facets(page) == entry["facets"]

        search_for(page, "bottle")
        remember()
        search_for(page, "hat")
        remember()
        brand = shown_facets(page)["brand"][0][0]
        navigate(page, lambda: facet_box(page, "brand", brand).check())
        remember()
        navigate(page, lambda: page.select_option("#sort", "-price"))
        remember()
        assert len({entry["url"] for entry in seen}) == 4, "one history entry per search"
        assert url_params(page) == {"q": ["hat"], "brand": [brand], "sort": ["-price"]}

        for entry in reversed(seen[:-1]):
            navigate(page, page.go_back)
            assert_shows(entry)
        assert not facet_box(page, "brand", brand).count() or not facet_box(page, "brand", brand).is_checked()
        page.go_back()
        page.locator("#home").wait_for()
        assert page.url == home and card_skus(page) == [] and page.input_value("#q") == ""
        for entry in seen:
            navigate(page, page.go_forward)
            assert_shows(entry)
        assert facet_box(page, "brand", brand).is_checked()
        assert page.input_value("#sort") == "-price"


def test_facets_show_counts_narrow_the_results_and_clear(catalog, shop_url, chromium):
    with storefront(chromium, shop_url) as page:
        answer = search_for(page, "greystone")
        everything = card_skus(page)
        assert shown_facets(page) == api_facets(answer)  # a count beside every choice
        categories = shown_facets(page)["category"]
        assert len(categories) >= 3

        # One category: the grid holds exactly its count, and a chip says what is chosen.
        (first, first_count, _), (second, second_count, _) = categories[:2]
        navigate(page, lambda: facet_box(page, "category", first).check())
        page.locator("#status", has_text=f"{first_count} results").wait_for()
        assert len(card_skus(page)) == first_count
        assert set(card_skus(page)) < set(everything)
        assert url_params(page)["category"] == [first]
        assert len(chip_texts(page)) == 1 and chip_texts(page)[0].startswith("Category: ")

        # A second value of the same facet: either of them.
        navigate(page, lambda: facet_box(page, "category", second).check())
        page.locator("#status", has_text=f"{first_count + second_count} results").wait_for()
        assert len(card_skus(page)) == first_count + second_count
        assert url_params(page)["category"] == [first, second]
        narrowed = search_api(page, shop_url, q="greystone", category=[first, second])
        assert card_skus(page) == skus(narrowed) and shown_facets(page) == api_facets(narrowed)

        # Another facet too; its chip's × removes just that choice.
        in_stock = dict((value, count) for value, count, _ in shown_facets(page)["in_stock"])
        navigate(page, lambda: facet_box(page, "in_stock", "true").check())
        page.locator("#status", has_text=f"{in_stock['true']} results").wait_for()
        assert len(chip_texts(page)) == 3
        navigate(page, page.locator("#chip-list .chip", has_text="In stock").click)
        page.locator("#status", has_text=f"{first_count + second_count} results").wait_for()
        assert len(chip_texts(page)) == 2 and "in_stock" not in url_params(page)

        # Clear all: every hit again, no chips, no facet in the URL.
        navigate(page, lambda: page.click("#clear-all"))
        page.locator("#status", has_text=f"{answer['count']} results").wait_for()
        assert card_skus(page) == everything
        assert page.locator("#chips").is_hidden() and chip_texts(page) == []
        assert url_params(page) == {"q": ["greystone"]}
        assert shown_facets(page) == api_facets(answer)


def test_a_misspelt_query_is_corrected_and_the_words_as_typed_are_offered(catalog, shop_url, chromium):
    with storefront(chromium, shop_url) as page:
        corrected = search_for(page, "botle")
        assert corrected["did_you_mean"] == "bottle" and corrected["count"] > 0
        spelling = page.locator("#spelling")
        expect(spelling).to_have_text("Showing results for bottle. Search instead for botle")
        assert spelling.locator("strong").inner_text() == "bottle"
        assert card_skus(page) == skus(corrected)
        page.locator("#status", has_text="for “bottle”").wait_for()

        # "Search instead for botle": the words as typed, which no product has.
        as_typed = search_api(page, shop_url, q="botle", correct="false")
        assert as_typed["count"] == 0 and as_typed["unknown_words"] == ["botle"]
        navigate(page, lambda: page.click("#search-instead"), q="botle")
        page.locator("#status", has_text="0 results").wait_for()
        assert url_params(page) == {"q": ["botle"], "correct": ["false"]}
        assert spelling.is_hidden()
        expect(page.locator("#empty-title")).to_have_text("No products found for “botle”.")
        expect(page.locator("#empty-words")).to_have_text("No product mentions “botle”.")

        # The no-result state suggests what the catalog has for those letters; one click searches it.
        suggested = [s["text"] for s in suggestions(page, shop_url, "botle")]
        chips = page.locator("#empty-suggestions .suggestion-chip")
        chips.first.wait_for()
        assert chips.all_inner_texts() == suggested[:6] and "Bottles" in suggested
        navigate(page, page.locator("#empty-suggestions .suggestion-chip", has_text="Bottles").click,
                 q="Bottles")
        page.locator("#status", has_text="for “Bottles”").wait_for()
        assert url_params(page) == {"q": ["Bottles"]} and card_skus(page)

        navigate(page, page.go_back, q="botle")  # Back to the words as typed
        page.locator("#status", has_text="0 results").wait_for()
        assert url_params(page)["correct"] == ["false"]


def test_suggestions_while_typing_and_the_keyboard(catalog, shop_url, chromium):
    with storefront(chromium, shop_url) as page:
        # The empty query suggests the catalog's top categories and brands.
        popular = [s["text"] for s in suggestions(page, shop_url, "")]
        chips = page.locator("#popular .suggestion-chip")
        chips.first.wait_for()
        assert chips.all_inner_texts() == popular

        # Typing opens a listbox of completions (an ARIA combobox).
        combobox, listbox = page.locator("#q"), page.locator("#suggestions")
        expected = [s["text"] for s in suggestions(page, shop_url, "gre")]
        combobox.press_sequentially("gre", delay=40)
        expect(listbox).to_be_visible()
        expect(listbox.locator("[role=option] .suggestion-text")).to_have_text(expected)
        assert combobox.get_attribute("aria-expanded") == "true"
        assert combobox.get_attribute("aria-controls") == "suggestions"

        # Down, down, up: the active option follows, the focus stays in the box.
        combobox.press("ArrowDown")
        combobox.press("ArrowDown")
        assert combobox.get_attribute("aria-activedescendant") == "suggestion-1"
        combobox.press("ArrowUp")
        assert combobox.get_attribute("aria-activedescendant") == "suggestion-0"
        assert listbox.locator("[aria-selected=true]").inner_text().startswith(expected[0])

        # Escape closes it; typing opens it again; Enter on an option searches for it.
        combobox.press("Escape")
        expect(listbox).to_be_hidden()
        assert combobox.get_attribute("aria-expanded") == "false"
        combobox.press_sequentially("y", delay=40)
        expect(listbox).to_be_visible()
        chosen = listbox.locator("[role=option] .suggestion-text").first.inner_text()
        combobox.press("ArrowDown")
        answer = navigate(page, lambda: combobox.press("Enter"), q=chosen)
        page.locator("#status", has_text=f"for “{chosen}”").wait_for()
        expect(listbox).to_be_hidden()
        assert page.input_value("#q") == chosen
        assert url_params(page)["q"] == [chosen]
        assert card_skus(page) == skus(answer)


def test_the_page_works_at_390px(catalog, shop_url, chromium, tmp_path):
    with storefront(chromium, shop_url, "/?q=greystone", width=390, height=844) as page:
        page.locator("#grid .card").first.wait_for()
        page.locator("#grid .card img").first.evaluate("img => img.decode()")

        def assert_fits() -> None:
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the page scrolls sideways ({width} px)"
            box = page.locator("#search-button").bounding_box()
            assert box and box["width"] > 0 and box["x"] >= 0 and box["x"] + box["width"] <= 390
            assert box["y"] >= 0 and box["y"] + box["height"] <= 844
        assert_fits()
        assert page.locator("#search-button").is_visible()
        screenshot(page, tmp_path, "storefront-390.png")

        # The filters fold away behind a button; open, they show their counts and work.
        assert page.locator("#filters").is_hidden()
        toggle = page.locator("#filters-toggle")
        assert toggle.is_visible() and toggle.get_attribute("aria-expanded") == "false"
        toggle.click()
        assert toggle.get_attribute("aria-expanded") == "true"
        assert page.locator("#facets .count").first.is_visible()
        assert_fits()
        value, count, _ = shown_facets(page)["category"][0]
        navigate(page, lambda: facet_box(page, "category", value).check())
        page.locator("#status", has_text=f"{count} results").wait_for()
        expect(toggle).to_have_text("Filters (1)")
        assert_fits()
        screenshot(page, tmp_path, "storefront-390-filters.png")

        # The search button is still usable there.
        page.fill("#q", "bottle")
        navigate(page, lambda: page.click("#search-button"), q="bottle")
        assert_fits()


def test_every_search_shows_it_is_loading(catalog, shop_url, chromium):
    held: list[Route] = []
    with storefront(chromium, shop_url, None) as page:
        page.route("**/api/v1/search/**", lambda route: held.append(route))  # released below

        def assert_loading_then_release() -> None:
            while not held:
                page.wait_for_timeout(10)
            assert page.get_attribute("#storefront", "aria-busy") == "true"
            assert page.locator("#loading").is_visible()
            expect(page.locator("#status")).to_have_text("Searching…")
            held.pop().continue_()
            settle(page)
            assert page.locator("#loading").is_hidden()

        page.goto(f"{shop_url}/?q=greystone")  # first: a deep link
        assert_loading_then_release()
        page.fill("#q", "hat")  # second: words
        page.press("#q", "Enter")
        assert_loading_then_release()
        value = shown_facets(page)["brand"][0][0]
        facet_box(page, "brand", value).check()  # third: a facet
        assert_loading_then_release()
        page.select_option("#sort", "price")  # fourth: the order
        assert_loading_then_release()
        page.go_back()  # and Back
        assert_loading_then_release()
        assert card_skus(page)


def test_shopper_messages_never_name_the_software(catalog, shop_url, chromium):
    with storefront(chromium, shop_url) as page:
        # A file that is not a picture, and a PNG cut short: the API's messages name the
        # library and the imaging library's error; the shopper reads the shop's words.
        for name, data, shown in [
            ("notes.png", b"just some text, not a picture", "Please choose an image file"),
            ("cut.png", base64.b64decode(
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"), "could not be read"),
        ]:
            with page.expect_response(lambda response: "/api/v1/search/image/" in response.url) as answer:
                page.set_input_files("#image-input", files=[
                    {"name": name, "mimeType": "image/png", "buffer": data}])
            settle(page)
            assert answer.value.status in (400, 415)
            page.locator("#error", has_text=shown).wait_for()
            assert_shopper_text(page)
        message = answer.value.json()["error"]["message"]
        assert message not in page.locator("body").inner_text()
        assert not re.search(r"\b(Pillow|PIL|clip_search)\b", page.locator("#error").inner_text())


def test_highlights_become_marks_and_nothing_else(catalog, shop_url, chromium):
    """The API escapes its highlights; the page trusts only their <mark>s even if it did not."""
    with storefront(chromium, shop_url, None) as page:
        answer = search_api(page, shop_url, q="greystone")
        first = answer["results"][0]
        first["highlight"] = {"title": '<mark>Grey</mark>stone <img src="x" onerror="window.owned=1">'
                                       '<b>bold</b> &lt;i&gt;'}
        page.route("**/api/v1/search/**", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(answer)))
        page.goto(f"{shop_url}/?q=greystone")
        settle(page)
        title = page.locator("#grid .card .title").first
        assert title.inner_text() == "Greystone bold <i>"
        assert title.locator("mark").all_inner_texts() == ["Grey"]
        assert title.locator("*:not(mark)").count() == 0
        assert page.evaluate("window.owned") is None


# --------------------------------------------------------------------------- events (the search log)


def logged_search(search_id: str, timeout: float = 10.0) -> bool:
    """Whether the live server's search log writer thread wrote the search's row (it writes in
    batches a moment after the response, committed on its own connection: never flushed from
    here, where rows would be written inside this test's transaction, unseen by the server)."""
    deadline = time.monotonic() + timeout
    while not SearchRecord.objects.filter(pk=search_id).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def logged_events(search_id: str, expected: int, timeout: float = 10.0) -> list[tuple]:
    """The search's events as the live server recorded them: (kind, product pk, position), in
    the order they came, once ``expected`` have arrived (a beacon is sent in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(SearchEvent.objects.filter(search_id=search_id).order_by("created_at", "pk")
                    .values_list("kind", "object_pk", "position"))
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def event_requests(page: Page) -> list[dict]:
    """Every event the page sends from now on, as sent (the method, the type, the JSON body)."""
    sent: list[dict] = []
    page.on("request", lambda request: "/api/v1/events/" in request.url and sent.append({
        "method": request.method, "content_type": request.headers.get("content-type", ""),
        "body": json.loads(request.post_data or "null")}))
    return sent


def test_opening_and_adding_the_second_result_are_logged_with_its_search_and_position(
        catalog, shop_url, chromium, tmp_path, monkeypatch):
    monkeypatch.setattr("shop_demo.storefront.views.PAGE_SIZE", 3)  # page 2 below starts at result 4
    with storefront(chromium, shop_url) as page:
        sent = event_requests(page)
        answer = search_for(page, "greystone")
        search_id, second = answer["search_id"], answer["results"][1]
        assert search_id and logged_search(search_id)
        card = page.locator("#grid .card").nth(1)
        assert card.get_attribute("data-pk") == str(second["id"])
        assert card.get_attribute("data-position") == "2"

        # The title opens the product's panel (the demo has no product pages): a click.
        card.locator(".title").click()
        dialog = page.locator("#product-dialog")
        expect(dialog).to_be_visible()
        expect(dialog.locator("#dialog-title")).to_have_text(second["title"])
        assert logged_events(search_id, 1) == [("click", str(second["id"]), 2)]
        screenshot(page, tmp_path, "storefront-product-panel.png")

        # "Add to cart" in the panel, then on the card: each an add to cart of result 2.
        page.click("#dialog-add")
        expect(page.locator("#cart-count")).to_have_text("1")
        page.click("#product-dialog .dialog-close")
        expect(dialog).to_be_hidden()
        card.locator(".add-to-cart").click()
        expect(page.locator("#cart-count")).to_have_text("2")
        # The picture opens the panel too.
        card.locator(".thumb").click()
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()

        product = str(second["id"])
        assert logged_events(search_id, 4) == [("click", product, 2), ("add_to_cart", product, 2),
                                               ("add_to_cart", product, 2), ("click", product, 2)]
        # As a beacon sends them: POSTed JSON as text/plain, naming the search and the position.
        assert [request["body"] for request in sent] == [
            {"search_id": search_id, "kind": kind, "product_id": product, "position": 2}
            for kind in ("click", "add_to_cart", "add_to_cart", "click")]
        assert all(request["method"] == "POST" and request["content_type"].startswith("text/plain")
                   for request in sent)

        # On page 2 a result's position counts the first page's results too; each page is a
        # search of its own in the log.
        page_two = navigate(page, lambda: page.click("#next"))
        assert page_two["search_id"] not in (None, search_id)
        page.locator("#grid .card").first.locator(".add-to-cart").click()
        fourth = str(page_two["results"][0]["id"])
        assert logged_events(page_two["search_id"], 1) == [("add_to_cart", fourth, 4)]


def test_where_no_beacon_can_be_queued_the_event_goes_by_fetch_keepalive(catalog, shop_url, chromium):
    with storefront(chromium, shop_url, None) as page:
        page.add_init_script("navigator.sendBeacon = () => false;")  # e.g. the beacon quota is full
        types: list[str] = []
        page.on("request", lambda request: "/api/v1/events/" in request.url
                and types.append(request.resource_type))
        page.goto(f"{shop_url}/")
        settle(page)
        answer = search_for(page, "greystone")
        page.locator("#grid .card").first.locator(".add-to-cart").click()
        first = str(answer["results"][0]["id"])
        assert logged_events(answer["search_id"], 1) == [("add_to_cart", first, 1)]
        assert types == ["fetch"]


def test_a_search_the_log_did_not_keep_sends_no_event(catalog, shop_url, chromium):
    with storefront(chromium, shop_url, None) as page:
        answer = search_api(page, shop_url, q="greystone")
        unlogged = {**answer, "search_id": None}  # what the API answers with SEARCH_LOG off
        page.route("**/api/v1/search/**", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(unlogged)))
        sent = event_requests(page)
        page.goto(f"{shop_url}/?q=greystone")
        settle(page)
        card = page.locator("#grid .card").nth(1)
        card.locator(".title").click()
        expect(page.locator("#product-dialog")).to_be_visible()
        page.click("#dialog-add")
        expect(page.locator("#cart-count")).to_have_text("1")  # the cart works all the same
        page.wait_for_timeout(300)
        assert sent == []


# --------------------------------------------------------------------------- the analytics page

STAFF_PASSWORD = "analytics-pw-123"


@pytest.fixture(scope="module")
def simulated_log(shop_url, django_db_blocker) -> Iterator[list[shoppers.Search]]:
    """A short simulated fortnight: shoppers search and click through the live server's API over
    HTTP (manage.py demo_shoppers --url), their rows backdated over 14 days. Committed, as the
    live server wrote them; deleted afterwards."""
    cache.clear()
    with django_db_blocker.unblock():
        empty_the_search_log()  # the page's top queries are these shoppers' only
        searches = shoppers.simulate(lambda n: shoppers.HttpShop(shop_url, shoppers.user_agent(n)),
                                     shoppers=24, seed=8, days=14)
        assert shoppers.backdate(searches) == len(searches)
    yield searches
    with django_db_blocker.unblock():
        SearchRecord.objects.filter(pk__in=[search.search_id for search in searches]).delete()


@pytest.fixture(scope="module")
def staff(shop_url, django_db_blocker) -> Iterator[str]:
    """A superuser the live server sees (committed); deleted afterwards."""
    from django.contrib.auth import get_user_model

    with django_db_blocker.unblock():
        user = get_user_model().objects.create_superuser("analytics-staff", "staff@example.com",
                                                         STAFF_PASSWORD)
    yield user.username
    with django_db_blocker.unblock():
        user.delete()


def test_the_analytics_page_draws_a_simulated_fortnight(simulated_log, staff, shop_url, chromium, tmp_path):
    clicked = [search for search in simulated_log if search.clicks]
    assert len(clicked) >= 5 and any(search.count == 0 for search in simulated_log)
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("response", lambda response: response.status >= 500 and problems.append(response.url))
    try:
        page.goto(f"{shop_url}/admin/login/?next=/admin/clip_search/searchrecord/analytics/")
        page.fill("#id_username", staff)
        page.fill("#id_password", STAFF_PASSWORD)
        page.click("input[type=submit]")
        page.locator(".clip-analytics svg").first.wait_for()
        main = page.locator("#content-main")
        assert main.locator("svg").count() >= 3
        # What the simulation did is on it: a clicked query among the top ones, and the daily
        # chart spans the fortnight (a column per day with searches).
        top_queries = main.locator(".clip-analytics-table").first.inner_text()
        assert any(search.phrase.text in top_queries for search in clicked)
        days = {search.at.date() for search in simulated_log}
        assert len(days) >= 7
        shot = screenshot(page, tmp_path, "analytics.png", full_page=True)
    finally:
        context.close()
    assert not problems
    assert_not_blank(shot)
