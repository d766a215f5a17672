"""A staff member searches the product changelist in a real browser (Debian chromium)."""

from __future__ import annotations

import pytest
from django.db import connections

from shop_demo.catalog.generator import generate_catalog
from tests.catalog import embedded_catalog
from tests.conftest import assert_not_blank

pytestmark = pytest.mark.browser

PASSWORD = "browser-pw-123"


@pytest.fixture(scope="module", autouse=True)
def close_connections_while_the_browser_runs():
    """Playwright's sync API leaves an event loop running in this thread, and while it runs
    Django keeps this thread's connections apart (asgiref's Local): close them before the loop
    stops, or they outlive the test database."""
    yield
    connections.close_all()


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """A small drawn catalog, embedded and committed so the live server sees it."""
    specs = [spec for spec in generate_catalog(16, seed=77) if not spec.is_unsafe]
    with embedded_catalog(specs, tmp_path_factory.mktemp("media"), django_db_blocker) as products:
        yield products


def test_staff_search_the_changelist_and_see_the_product_first(catalog, live_server, chromium, tmp_path,
                                                                django_user_model):
    django_user_model.objects.create_superuser("browser-staff", "staff@example.com", PASSWORD)
    spec, product = catalog[3]
    page = chromium.new_page(viewport={"width": 1600, "height": 1000})
    try:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/catalog/product/")
        page.fill("#id_username", "browser-staff")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#searchbar")
        page.fill("#searchbar", spec.sku)
        page.press("#searchbar", "Enter")
        page.wait_for_url("**q=*")
        first_row = page.locator("#result_list tbody tr").first
        first_row.wait_for()
        screenshot = tmp_path / "changelist-search.png"
        page.screenshot(path=str(screenshot), full_page=True)
        assert first_row.locator("th a").inner_text() == product.title
        assert page.get_by_text(product.title, exact=True).first.is_visible()
        badge = first_row.locator(".clip-status").bounding_box()
        assert badge and badge["x"] + badge["width"] <= page.viewport_size["width"]  # no side-scrolling
    finally:
        page.close()
    assert_not_blank(screenshot)
