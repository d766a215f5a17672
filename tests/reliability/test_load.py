"""A short run of bench/load.py's client against a live server: concurrency without errors.

No timing is asserted (2 shared cores); the full run (20 clients × 60 s) is ``bench/load.py``.
"""

import pytest

from bench.load import run_load

# The server thread reads the module's committed catalog; the marker sets up the test database.
pytestmark = pytest.mark.django_db


def test_five_clients_for_ten_seconds_get_no_error(live_shop):
    url, shown = live_shop
    images = [product.image.open("rb").read() for product in shown[:6]]
    report = run_load(url, clients=5, seconds=10, images=images,
                      product_ids=[product.pk for product in shown[:20]], max_requests=200)
    assert report.errors == [], report.summary()
    assert report.statuses[200] == report.requests >= 5  # every client got answers, all 200
    assert set(report.latencies) == {"text", "image", "similar"}, report.summary()
