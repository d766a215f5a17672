"""What the read-replica test runs, in a process of its own: the demo shop with two aliases.

``default`` is a private primary and ``replica`` its streaming standby
(tests/reliability/replication.py); the routers are the ones README "Operating it" gives a
shop (tests/reliability/replica_settings.py). Its own process because pytest-django builds a
test database for every alias of the settings it runs with, and a standby takes no writes.

It migrates the primary, indexes a drawn catalog, then searches, writes, indexes and reviews
the way a shop's web and worker processes do, and prints one JSON object of what it saw
(``python -m tests.reliability.replica_scenario``); tests/reliability/test_read_replica.py
asserts on it. Nothing here asserts: a fact the test rejects is shown in full there.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

CATALOG_SIZE = 24
SEED = 5
LAG_SAMPLES = 5


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, skip_checks=True)  # the routers allow it on the primary only
    facts: dict[str, Any] = {}
    steps = {"servers": servers, "seed": seed, "search": search_on_standby, "writes": writes,
             "worker": worker_while_standby_lags, "save": save_while_standby_lags, "approval": approval,
             "lag": lag}
    for name, step in steps.items():
        try:
            facts[name] = step()
        except Exception:  # the test shows it as the step's failure, and the later steps still run
            facts[name] = {"error": traceback.format_exc()}
    print(json.dumps(facts))


# --------------------------------------------------------------------------- helpers


def registration():
    from clip_search.registry import registry
    from shop_demo.catalog.models import Product

    return registry.get(Product)


def skus(queryset) -> list[str]:
    return [product.sku for product in queryset]


def replayed() -> float:
    """Seconds until the standby has replayed everything the primary committed so far."""
    from django.db import connections

    from tests.reliability.replication import wait_for_replay

    return wait_for_replay(connections["default"], connections["replica"])


@contextlib.contextmanager
def replay_paused() -> Iterator[None]:
    """The standby stops applying WAL (it still receives it): a lag as long as we like."""
    from django.db import connections

    with connections["replica"].cursor() as cursor:
        cursor.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with connections["replica"].cursor() as cursor:
            cursor.execute("SELECT pg_wal_replay_resume()")


@contextlib.contextmanager
def statements() -> Iterator[list[dict[str, Any]]]:
    """Every statement run meanwhile: its alias, the port of the server its connection is to,
    and its text (``execute_wrapper`` on each alias)."""
    from django.db import connections

    seen: list[dict[str, Any]] = []

    def recorder(alias: str):
        def record(execute, sql, params, many, context):
            port = context["connection"].connection.info.port
            seen.append({"alias": alias, "port": port, "sql": " ".join(sql.split())[:200]})
            return execute(sql, params, many, context)
        return record

    with contextlib.ExitStack() as stack:
        for alias in connections:
            stack.enter_context(connections[alias].execute_wrapper(recorder(alias)))
        yield seen


def queued_pks() -> list[str]:
    """The pks of the embed tasks published since the last call (the in-memory broker)."""
    from clip_search.conf import clip_settings
    from shop_demo.celery import app

    pks: list[str] = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(clip_settings.QUEUE)
        while queue.qsize():
            message = queue.get(timeout=1)
            pks.extend(message.payload[0][1])
            message.ack()
        queue.close()
    return pks


def fresh_specs() -> list:
    """Drawn products after the seeded catalog that the storefront shows (public, not a knife)."""
    from shop_demo.catalog.generator import generate_catalog

    fresh = generate_catalog(CATALOG_SIZE + 4 * (LAG_SAMPLES + 1), seed=SEED)[CATALOG_SIZE:]
    return [spec for spec in fresh if spec.is_public and not spec.is_unsafe]


# --------------------------------------------------------------------------- the steps


def servers() -> dict[str, Any]:
    """Which server each alias reaches, and whether it is a standby."""
    from django.db import connections

    found = {}
    for alias in ("default", "replica"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery(), current_setting('port')::int")
            in_recovery, port = cursor.fetchone()
        found[alias] = {"in_recovery": in_recovery, "port": port}
    return found


def seed() -> dict[str, Any]:
    """The drawn catalog, created and indexed through the routers (signals off: an import)."""
    from clip_search.bulk import reindex_inline
    from clip_search.indexing import register_encoder
    from shop_demo.catalog.generator import generate_catalog
    from tests.catalog import imported

    specs = generate_catalog(CATALOG_SIZE, seed=SEED)
    imported(specs)
    summary = reindex_inline(registration(), register_encoder(), missing_only=True, batch_size=64)
    replay = replayed()
    return {"summary": summary.as_dict(), "replay_seconds": replay,
            "public": [{"sku": spec.sku, "category": spec.category, "colour": spec.colour}
                       for spec in specs if spec.is_public and not spec.is_unsafe],
            "hidden": [spec.sku for spec in specs if not spec.is_public],
            "unsafe": [spec.sku for spec in specs if spec.is_unsafe]}


def search_on_standby() -> dict[str, Any]:
    """search() and the API through the routers, and the same search pinned to the primary."""
    from django.test import Client

    from clip_search.search import search
    from shop_demo.catalog.models import Product

    sku = Product.objects.filter(is_public=True).order_by("pk").values_list("sku", flat=True)[5]
    queries = [sku, "mug", "orange mug", "umbrella"]
    with statements() as seen:
        routed = {query: skus(search(registration().get_queryset(), text=query)) for query in queries}
        response = Client().get("/api/v1/search/", {"q": "orange mug"})
    on_primary = {query: skus(search(registration().get_queryset().using("default"), text=query))
                  for query in queries}
    return {"sku": sku, "routed": routed, "on_primary": on_primary, "statements": seen,
            "api": {"status": response.status_code,
                    "skus": [hit["sku"] for hit in response.json().get("results", [])]}}


def writes() -> dict[str, Any]:
    """Each kind of write a search might have done, tried on the replica alias inside a
    transaction as ``search()`` opens one there: the standby refuses them all. And a save
    through the routers, which lands on the primary."""
    from django.db import DatabaseError, connections, router, transaction

    from shop_demo.catalog.models import Product

    attempts = {
        "insert": lambda cursor: cursor.execute("INSERT INTO catalog_brand (name) VALUES ('Nobody')"),
        "update": lambda cursor: Product.objects.using("replica").update(price=1),
        "select_for_update": lambda cursor: list(Product.objects.using("replica").select_for_update()[:1]),
        "temp_table": lambda cursor: cursor.execute("CREATE TEMP TABLE scratch (x int)"),
        "nextval": lambda cursor: cursor.execute("SELECT nextval('catalog_product_id_seq')"),
    }
    refused: dict[str, str | None] = {}
    for name, attempt in attempts.items():
        try:
            with transaction.atomic(using="replica"), connections["replica"].cursor() as cursor:
                attempt(cursor)
            refused[name] = None
        except DatabaseError as error:
            refused[name] = str(error).strip()
    product = Product.objects.order_by("pk").first()
    product.price += 1
    product.save(update_fields=["price"])
    on_primary = Product.objects.using("default").get(pk=product.pk).price == product.price
    replay = replayed()
    on_standby = Product.objects.get(pk=product.pk).price == product.price
    return {"refused": refused, "db_for_write": router.db_for_write(Product),
            "db_for_read": router.db_for_read(Product), "saved_to": product._state.db,
            "save_on_primary": on_primary, "save_on_standby_after_replay": on_standby,
            "replay_seconds": replay}


def worker_while_standby_lags() -> dict[str, Any]:
    """A product created, and its embed task run by a worker with the shop's settings (routers
    included), while the standby replays nothing: indexed on the primary, searchable there
    and not yet on the standby; on the standby once it has replayed."""
    from clip_search.models import Embedding
    from clip_search.search import search
    from clip_search.tasks import embed_batch
    from tests.catalog import imported

    spec = fresh_specs()[0]
    public = registration().get_queryset()
    with replay_paused():
        [product] = imported([spec])
        summary = embed_batch.apply(args=(registration().label, [str(product.pk)])).get()
        status = Embedding.objects.using("default").filter(object_pk=str(product.pk)).values_list(
            "status", flat=True).first()
        row_on_standby = Embedding.objects.filter(object_pk=str(product.pk)).exists()
        found_on_primary = spec.sku in skus(search(public.using("default"), text=spec.sku))
        found_on_standby = spec.sku in skus(search(public, text=spec.sku))
    replayed()
    return {"summary": summary, "status_on_primary": status, "paused": {
        "row_on_standby": row_on_standby, "found_on_primary": found_on_primary,
        "found_on_standby": found_on_standby},
        "found_on_standby_after_replay": spec.sku in skus(search(public, text=spec.sku))}


def save_while_standby_lags() -> dict[str, Any]:
    """A web process renames an indexed product while the standby lags: the save handler must
    see the new title (and queue the product), not the standby's old one."""
    from clip_search.models import Embedding
    from shop_demo.catalog.models import Product

    queued_pks()
    product = Product.objects.filter(is_public=True).order_by("pk").first()
    status = Embedding.objects.filter(object_pk=str(product.pk)).values_list("status", flat=True).first()
    with replay_paused():
        product.title = f"Renamed {product.title}"
        product.save()
    replayed()
    return {"pk": str(product.pk), "status_before": status, "queued": queued_pks()}


def approval() -> dict[str, Any]:
    """Staff approve the flagged product's image through the routers: it is indexed again."""
    from clip_search import moderation
    from clip_search.models import Embedding, ReviewItem

    item = ReviewItem.objects.filter(status=ReviewItem.Status.OPEN).order_by("pk").first()
    if item is None:
        return {"item": None}
    moderation.approve(item)
    row = Embedding.objects.using("default").get(pk=item.embedding_id)
    return {"item": item.pk, "object_pk": row.object_pk, "status_on_primary": row.status}


def lag() -> dict[str, Any]:
    """How long a product indexed on the primary takes to show on the standby. From the
    worker's commit, polled together: when the standby has replayed the commit's WAL, and how
    many searches there missed the product before one found it."""
    from django.db import connections

    from clip_search.search import search
    from clip_search.tasks import embed_batch
    from tests.catalog import imported
    from tests.reliability.replication import current_lsn, has_replayed

    samples = []
    for spec in fresh_specs()[1:1 + LAG_SAMPLES]:
        [product] = imported([spec])
        embed_batch.apply(args=(registration().label, [str(product.pk)])).get()
        committed = time.monotonic()
        target = current_lsn(connections["default"])
        replayed_at = found_at = None
        misses = 0
        while (replayed_at is None or found_at is None) and time.monotonic() - committed < 30:
            if replayed_at is None and has_replayed(connections["replica"], target):
                replayed_at = time.monotonic() - committed
            if found_at is None:
                if spec.sku in skus(search(registration().get_queryset(), text=spec.sku)):
                    found_at = time.monotonic() - committed
                else:
                    misses += 1
        samples.append({"sku": spec.sku, "replay_seconds": replayed_at, "searchable_seconds": found_at,
                        "misses": misses})
    return {"samples": samples}


if __name__ == "__main__":
    sys.exit(main())
