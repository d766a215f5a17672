"""Oscar's storefront search page, served by clip_search's hybrid search, in a real browser."""

from __future__ import annotations

import pytest
from django.db import connections

from tests.conftest import assert_not_blank
from tests.oscar.conftest import embed, oscar_product

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_oscars_search_page_shows_hybrid_results_in_a_browser(shop, pictures, live_server, chromium,
                                                               tmp_path):
    products = [oscar_product(shop, f"{colour} linen shirt", pictures.safe[i:i + 1], f"LINEN-{i}")
                for i, colour in enumerate(["Red", "Blue", "Green", "Grey"])]
    embed(*products)
    context = chromium.new_context(viewport={"width": 1280, "height": 960})
    page = context.new_page()
    server_errors = []
    page.on("response", lambda response: response.status >= 500 and server_errors.append(response.url))
    try:
        page.goto(f"{live_server.url}/search/?q=linen+shirt")
        page.get_by_text("Found 4 results").wait_for()
        titles = page.locator("article.product_pod h3 a").all_inner_texts()
        assert sorted(titles) == sorted(p.title for p in products)
        images = page.locator("article.product_pod img")  # Oscar's thumbnails of the products' images
        assert images.count() == 4
        assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(4))
        page.goto(f"{live_server.url}/search/?q=LINEN-2")
        assert page.locator("article.product_pod h3 a").first.inner_text() == "Green linen shirt"
        page.goto(f"{live_server.url}/search/?q=linen+shirt")
        page.get_by_text("Found 4 results").wait_for()
        shot = tmp_path / "oscar-search.png"
        page.screenshot(path=str(shot), full_page=True)
        assert_not_blank(shot)
    finally:
        context.close()
        connections.close_all()
    assert server_errors == []
