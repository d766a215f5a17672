"""Fixtures shared by the reliability suite.

The broker fixtures (``media``, ``queue``, ``redis_url``, ``start_worker``) are tests/conftest.py's;
the storefront catalog is tests/catalog.py's ``embedded_catalog``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.test import override_settings
from django.test.testcases import LiveServerThread, _StaticFilesHandler

from shop_demo.catalog.generator import generate_catalog
from tests.catalog import embedded_catalog

# Rates high enough that a bounded fuzz or load run measures the server, not the throttle
# (test_security and test_api check the throttle itself).
UNTHROTTLED = {"clip_search": None, "clip_search_image": None}


def unthrottled() -> dict:
    from django.conf import settings

    return {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": UNTHROTTLED}


@contextlib.contextmanager
def live_server_thread() -> Iterator[str]:
    """Django's own LiveServerThread (threaded WSGI, like runserver) on a free loopback port."""
    thread = LiveServerThread("127.0.0.1", _StaticFilesHandler, port=0)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    try:
        yield f"http://127.0.0.1:{thread.port}"
    finally:
        thread.terminate()


@pytest.fixture(scope="module")
def live_shop(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """A live server over 40 embedded drawn products (committed for the module), unthrottled;
    yields its URL and the products the storefront shows."""
    media_root = tmp_path_factory.mktemp("live-media")
    with django_db_blocker.unblock(), \
            embedded_catalog(generate_catalog(40, seed=4242), media_root, django_db_blocker) as rows, \
            override_settings(REST_FRAMEWORK=unthrottled()), live_server_thread() as url:
        cache.clear()
        yield url, storefront_products(rows)


def storefront_products(rows: list[tuple]) -> list:
    """The products of (spec, product) rows the storefront shows: public and indexed."""
    from clip_search.models import Embedding

    rows_indexed = Embedding.objects.filter(status=Embedding.Status.INDEXED)
    indexed = set(rows_indexed.values_list("object_pk", flat=True))
    return [product for spec, product in rows if spec.is_public and str(product.pk) in indexed]
