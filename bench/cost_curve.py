"""The cost curve: hybrid search at several catalog sizes in one command (issue 20).

    PYTHONPATH=. nice -n 5 .venv/bin/python bench/cost_curve.py --sizes 50000,200000,1000000 \
        [--queries 100] [--api-requests 300] [--drf-runs 200000:4] [--starved-build 200000:128MB]

A shop asks what search costs at its size and how to set PostgreSQL for it. One run answers for
each size with the same queries, by calling ``bench/search_scale.py``'s steps (nothing here
re-implements them):

1. a throwaway database per size (``search_scale.bench_database``, dropped after it unless
   ``--keep``), loaded by COPY (``load_catalog``), its HNSW index built with enough
   ``maintenance_work_mem`` (``--maintenance-work-mem``, per size) while pgvector's notices are
   caught: "hnsw graph no longer fits into maintenance_work_mem" means the build left memory.
   ``--starved-build SIZE:MEM`` builds once more at that size with too little, under a time cap,
   to show what that costs; the tuple count in its notice gives the graph's bytes per product;
2. the lexicon and the relevance calibration, as ``clip_reindex`` does;
3. the relations' sizes, then ``shared_buffers`` set to what a search reads (the tables, their
   indexes and TOAST: ``search_scale.SEARCH_RELATIONS``) plus 25 %, the server restarted with it
   and prewarmed;
4. library latency per leg and fused, per scope (``library_latency``, only the variants that
   change with the size), the fused statement's EXPLAIN per scope, recall@10 of the vector leg at
   ef_search 200 and 100 (``vector_recall``);
5. the DRF endpoint through gunicorn with the ONNX int8 text encoder read from a prebuilt graph
   cache (``bench/web_memory.py`` builds it and measures a fresh process on it), 1 keep-alive
   client, the storefront filter, the same requests at every size; the worker's RSS after them
   and whether it imported torch (a gunicorn ``worker_exit`` hook looks in ``sys.modules``).
   ``--drf-runs SIZE:N`` runs it N times in a row at that size (a fresh server each, same
   database), then once more with ``SEARCH["LIMIT"] = 100``;
6. PostgreSQL's memory in service: buffers used (``pg_buffercache``), the server processes' RSS.

Then one markdown table per metric with a column per size, and the settings a shop of each size
should use, derived from what was measured. Figures are also written to ``--results`` (JSON)
after each size; ``--tables-from FILE`` prints the tables again from it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402
import search_scale as bench  # noqa: E402
import web_memory  # noqa: E402

ROOT = bench.ROOT
# The library variants whose cost changes with the catalog's size (search_scale has more: torch
# encoding and the old text key, which do not).
VARIANTS = ("vector leg alone", "full-text leg alone", "keyword leg alone", "fused, vector precomputed",
            "fused + onnx int8 encode")
LOAD_SHARED_BUFFERS = "1GB"  # while loading and building: the same for every size
HEADROOM = 1.25  # shared_buffers over what a search reads; maintenance_work_mem over the graph
STEP = 256 * 2**20  # settings rounded up to this
MAX_SHARED_BUFFERS = 10 * 2**30  # this 24 GB machine is shared: never more than this
GRAPH_NOTICE = "hnsw graph no longer fits into maintenance_work_mem"
WORKER_REPORT = """\
import json, os, sys


def worker_exit(server, worker):
    # In the worker, as it stops: what the serving process imported.
    with open({path!r}, "w") as out:
        json.dump({{"pid": os.getpid(), "torch": "torch" in sys.modules,
                   "open_clip": "open_clip" in sys.modules,
                   "onnxruntime": "onnxruntime" in sys.modules}}, out)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,200000,1000000")
    parser.add_argument("--queries", type=int, default=100,
                        help="library queries per scope (same at every size)")
    parser.add_argument("--api-requests", type=int, default=300,
                        help="DRF requests per run (same at every size)")
    parser.add_argument("--drf-runs", default="200000:4", help="SIZE:N: N consecutive DRF runs at SIZE")
    parser.add_argument("--starved-build", default="200000:128MB",
                        help="SIZE:MEM: also build the index at SIZE with maintenance_work_mem MEM "
                             "('' to skip)")
    parser.add_argument("--starved-timeout", type=int, default=240,
                        help="seconds before the starved build is stopped")
    parser.add_argument("--maintenance-work-mem", default="50000:512MB,200000:1GB,1000000:5GB",
                        help="SIZE:MEM for the real build (sizes not listed: 5GB)")
    parser.add_argument("--hnsw", metavar="M,EF_CONSTRUCTION", default="",
                        help="the index's m and ef_construction (default: the app's, 16,64)")
    parser.add_argument("--recall-depths", default="",
                        help="more vector depths (= hnsw.ef_search) to measure recall at, e.g. 400")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep each size's database")
    parser.add_argument("--results", default=str(ROOT / "cost_curve_results.json"))
    parser.add_argument("--tables-from", metavar="FILE", help="print the tables from a results file and stop")
    args = parser.parse_args()
    if args.tables_from:
        tables(json.loads(Path(args.tables_from).read_text()))
        return
    bench.configure()
    if args.hnsw:
        from django.conf import settings

        m, ef_construction = (int(value) for value in args.hnsw.split(","))
        settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "HNSW": {"M": m, "EF_CONSTRUCTION": ef_construction}}
        from clip_search.conf import clip_settings

        clip_settings.reload()  # a plain assignment sends no setting_changed
    sizes = [int(size) for size in args.sizes.split(",")]
    results: dict = {"machine": _util.machine(), "command": " ".join(sys.argv), "sizes": {}}
    print(f"# cost curve — {results['machine']}; load average {os.getloadavg()[0]:.1f} at start")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clip-cost-graphs-") as graphs, server_settings():
        bench.progress("web process: building the ONNX graph cache, then a fresh process on it")
        results["web"] = {variant: web_memory.run_probe("vit-b-32", variant, graphs)
                          for variant in ("onnx, building", "cached graph")}
        for size in sizes:
            results["sizes"][str(size)] = measure_size(size, args, graphs)
            Path(args.results).write_text(json.dumps(results, indent=1))
            gc.collect()
    results["wall"] = time.perf_counter() - started
    Path(args.results).write_text(json.dumps(results, indent=1))
    tables(results)


def _per_size(option: str, size: int, default: str = "") -> str:
    """``SIZE:VALUE,...`` → the value for ``size``."""
    pairs = dict(item.split(":", 1) for item in option.split(",") if item)
    return pairs.get(str(size), default)


class server_settings:
    """``max_wal_size`` 8 GB for the run (a 1M-product load writes ~10 GB of WAL; at the 1 GB
    default it checkpoints every few seconds), reset after it with ``shared_buffers``."""

    def __enter__(self) -> None:
        self._set("ALTER SYSTEM SET max_wal_size = '8GB'")

    def __exit__(self, *exc) -> None:
        self._set("ALTER SYSTEM RESET max_wal_size", "ALTER SYSTEM RESET shared_buffers")

    @staticmethod
    def _set(*statements: str) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            cursor.execute("SELECT pg_reload_conf()")


# --------------------------------------------------------------------------- one size


def measure_size(size: int, args: argparse.Namespace, graphs: str) -> dict:
    """Every figure of one catalog size, in its own database."""
    from django.db import connection

    from clip_search.indexing import register_encoder

    bench.progress(f"== {size} products")
    print(f"\n# {size} products\n")
    figures: dict = {}
    connection.close()
    bench.restart_with_shared_buffers(LOAD_SHARED_BUFFERS)
    database = argparse.Namespace(shared_buffers="", reuse=None, keep=args.keep)
    with bench.bench_database(database, prefix=f"test_clip_search_cost_{size}"):
        encoder = register_encoder()
        bench.drop_vector_index(encoder)
        torch_encoder, onnx_encoder = bench.text_encoders(encoder)
        bench.progress(f"loading {size} products")
        started = time.perf_counter()
        bench.load_catalog(size, args.seed, encoder, torch_encoder)
        figures["load_s"] = time.perf_counter() - started
        encoder.refresh_from_db()
        starved = _per_size(args.starved_build, size)
        if starved:
            bench.progress(f"HNSW build with maintenance_work_mem {starved} "
                           f"(capped at {args.starved_timeout} s)")
            figures["starved_build"] = timed_build(encoder, starved, size, args.starved_timeout)
            bench.drop_vector_index(encoder)
        memory = _per_size(args.maintenance_work_mem, size, "5GB")
        bench.progress(f"HNSW build with maintenance_work_mem {memory}")
        figures["build"] = timed_build(encoder, memory, size)
        bench.progress("lexicon, calibration")
        figures["lexicon_s"] = bench.build_lexicon(encoder)["seconds"]
        bench.calibrate(encoder)
        figures["sizes"] = relation_sizes(encoder)
        print_sizes(figures["sizes"])

        hot = figures["sizes"]["search reads (prewarmed)"]
        shared_buffers = f"{min(MAX_SHARED_BUFFERS, _round_up(hot * HEADROOM)) // 2**20}MB"
        bench.progress(f"restart with shared_buffers {shared_buffers}")
        figures["shared_buffers"] = bench.restart_with_shared_buffers(shared_buffers)
        figures["prewarm"] = bench.prewarm()
        print(f"\nshared_buffers {figures['shared_buffers']}; {figures['prewarm']}")

        rng = random.Random(args.seed)
        catalog = bench.Catalog.read(encoder)
        pool = bench.QueryPool(rng, catalog)
        scopes = catalog.scopes()
        vectors = bench.Precomputed(torch_encoder)
        library = {scope.name: pool.take(args.queries, scope.category) for scope in scopes}
        api_queries = pool.take(args.api_requests)  # the same requests at every size and run
        vectors.add([q for queries in library.values() for q in queries])
        latency = bench.library_latency(scopes, library, vectors, torch_encoder, onnx_encoder, only=VARIANTS)
        figures["latency"] = {f"{scope} | {variant}": [_util.percentile_ms(samples, 50),
                                                         _util.percentile_ms(samples, 95)]
                              for (scope, variant), samples in latency.items()}
        bench.explain_scopes(scopes, library, vectors, verbose=False)
        shallow: dict = {}
        deeper: dict = {int(depth): {} for depth in args.recall_depths.split(",") if depth}
        recall = bench.vector_recall(scopes, library, vectors, catalog, rng, shallow, deeper)
        figures["recall"] = {f"{scope} | {kind}": [value, shallow[(scope, kind)],
                                                   *(means[(scope, kind)] for means in deeper.values())]
                             for (scope, kind), value in recall.items()}
        figures["recall_depths"] = [200, 100, *deeper]
        figures["hnsw"] = bench_hnsw()
        catalog.arrays.clear()  # 2 GB at 1M products
        gc.collect()

        runs = int(_per_size(args.drf_runs, size, "1"))
        figures["drf"] = (drf_runs(catalog, pool, api_queries, graphs, runs, limit_100=runs > 1)
                          if runs else [])
        figures["postgres"] = postgres_memory()
        print(f"\nPostgreSQL in service: {figures['postgres']}")
    return figures


def bench_hnsw() -> str:
    from clip_search.conf import clip_settings

    return f"m {clip_settings.HNSW['M']}, ef_construction {clip_settings.HNSW['EF_CONSTRUCTION']}"


def _round_up(size: float) -> int:
    return int(math.ceil(size / STEP) * STEP)


def timed_build(encoder, maintenance_work_mem: str, size: int, timeout: int | None = None) -> dict:
    """``sql.ensure_vector_index`` with ``maintenance_work_mem``, timed; pgvector's notices kept,
    and the build's progress (``pg_stat_progress_create_index``) polled so that a build stopped
    by ``timeout`` says how far it got."""
    from django.db import connection
    from django.db.utils import OperationalError

    from clip_search import sql

    notices: list[str] = []

    def notice(diag) -> None:
        notices.append(diag.message_primary or "")

    connection.ensure_connection()
    connection.connection.add_notice_handler(notice)
    progress: dict = {}
    done = threading.Event()

    def poll() -> None:
        with bench.raw_connection() as raw:
            raw.autocommit = True
            while not done.wait(2):
                row = raw.execute("SELECT phase, tuples_done, tuples_total "
                                  "FROM pg_stat_progress_create_index "
                                  "WHERE datname = current_database()").fetchone()
                if row:
                    progress.update(phase=row[0], tuples_done=row[1], tuples_total=row[2])

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    finished = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false), "
                       "current_setting('max_parallel_maintenance_workers')", [maintenance_work_mem])
        workers = cursor.fetchone()[1]
        cursor.execute("SELECT set_config('statement_timeout', %s, false)", [f"{timeout or 0}s"])
        started = time.perf_counter()
        try:
            sql.ensure_vector_index(encoder.pk, encoder.dimension)
        except OperationalError as error:  # the statement_timeout: the build did not finish
            finished, notices = False, [*notices, str(error).splitlines()[0]]
        elapsed = time.perf_counter() - started
        cursor.execute("RESET statement_timeout")
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("SELECT pg_relation_size(c.oid) FROM pg_class c WHERE relname = %s",
                       [sql.vector_index_name(encoder.pk)])
        index_bytes = (cursor.fetchone() or [None])[0]
    done.set()
    watcher.join()
    connection.connection.remove_notice_handler(notice)
    spilled = next((n for n in notices if n.startswith(GRAPH_NOTICE)), None)
    after = int(spilled.rsplit("after", 1)[1].split()[0]) if spilled else None
    figures = {"maintenance_work_mem": maintenance_work_mem, "workers": workers, "seconds": elapsed,
               "finished": finished, "index_bytes": index_bytes, "notices": notices,
               "fitted_tuples": after, "progress": progress}
    if after:  # the graph's memory per product, measured: the setting divided by what fitted
        figures["graph_bytes_per_product"] = _bytes(maintenance_work_mem) / after
    state = "done" if finished else f"stopped after {timeout} s at {progress}"
    print(f"\nHNSW build, maintenance_work_mem {maintenance_work_mem}, {workers} parallel workers: "
          f"{elapsed:.1f} s, {state}; notices: {notices or 'none'}")
    return figures


def _bytes(setting: str) -> int:
    units = {"kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
    for unit, factor in units.items():
        if setting.endswith(unit):
            return int(float(setting[: -len(unit)]) * factor)
    return int(setting)


def relation_sizes(encoder) -> dict[str, int]:
    """Bytes per part of the catalog a shop has to hold (tables with TOAST, indexes apart)."""
    from django.db import connection

    from clip_search import sql

    parts = {
        "products (heap)": "pg_table_size('catalog_product')",
        "products (indexes)": "pg_indexes_size('catalog_product')",
        "embedding rows (heap + TOAST)": "pg_table_size('clip_search_embedding')",
        "embedding rows (indexes: GIN full text, trigram, tokens, btree)":
            "pg_indexes_size('clip_search_embedding')",
        "image rows with vectors (heap + TOAST)": "pg_table_size('clip_search_imageembedding')",
        "HNSW index": f"pg_relation_size('{sql.vector_index_name(encoder.pk)}')",
        "image rows (other indexes)": (f"pg_indexes_size('clip_search_imageembedding') - "
                                       f"pg_relation_size('{sql.vector_index_name(encoder.pk)}')"),
        "lexicon (terms, suggestions, indexes)": "pg_total_relation_size('clip_search_term') + "
                                                 "pg_total_relation_size('clip_search_suggestion')",
        "database": "pg_database_size(current_database())",
        "search reads (prewarmed)": f"(SELECT sum(pg_relation_size(c.oid)) FROM pg_class c "
                                    f"WHERE {bench.SEARCH_RELATIONS})",
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"({expression})::bigint" for expression in parts.values()))
        return dict(zip(parts, cursor.fetchone(), strict=True))


def print_sizes(sizes: dict[str, int]) -> None:
    print("\n| relation | MB |\n|---|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size / 2**20:.0f} |")


# Where a DRF request's time goes: the pre-session-7 cap on fused hits (session 7 raised it to
# 1000 so that every hit is reachable), and the demo's four facets counted over the hits.
LIMIT_100 = 'CLIP_SEARCH = {**CLIP_SEARCH, "SEARCH": {"LIMIT": 100}}\n'
NO_FACETS = 'CLIP_SEARCH_API = {**CLIP_SEARCH_API, "FACETS": {}}\n'


def drf_runs(catalog, pool, queries: list[str], graphs: str, runs: int, limit_100: bool) -> list[dict]:
    """``runs`` consecutive runs of GET /api/v1/search/ (storefront filter, 1 keep-alive client),
    each on a fresh gunicorn whose ONNX text graph comes from ``graphs``; then, if ``limit_100``,
    one each with ``SEARCH["LIMIT"] = 100`` (the pre-session-7 cap), without facets, and both: a
    profile of what the request pays for. p50/p95, the worker's RSS and what it imported."""
    from django.urls import reverse

    path = reverse("clip_search_api:search", kwargs={"version": "v1"})
    scope = next(scope for scope in catalog.scopes() if scope.api_params == {})
    variants = [("demo settings (LIMIT 1000, 4 facets)", "")] * runs
    if limit_100:
        variants += [("LIMIT 100", LIMIT_100), ("facets off", NO_FACETS),
                     ("LIMIT 100, facets off", LIMIT_100 + NO_FACETS)]
    rows = []
    print(f"\n## Through DRF: GET {path}?q=… ({scope.name}), gunicorn 1 gthread worker × 4 threads, "
          "ONNX int8 from the graph cache, 1 keep-alive client, ms\n")
    print("| run | variant | requests | p50 | p95 | p99 | req/s | worker RSS MB | torch imported |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="clip-cost-worker-") as folder:
        for number, (variant, extra) in enumerate(variants, 1):
            report = Path(folder) / f"worker-{number}.json"
            config = Path(folder) / f"gunicorn-{number}.py"
            config.write_text(WORKER_REPORT.format(path=str(report)))
            text_encoder = {**bench.ONNX_INT8, "GRAPH_CACHE": graphs}
            bench.progress(f"DRF run {number}: {variant}")
            with bench.live_server(text_encoder, "gunicorn", extra_settings=extra,
                                   extra_args=["--config", str(config)]) as server:
                server.get(path, {"q": pool.take(1)[0]}, timeout=300)  # loads the text encoder
                server.load(path, {}, pool.take(8), 1)
                samples, wall = server.load(path, scope.api_params, queries, 1)
                rss, peak = bench._memory_of(server.worker_pid())
            imported = json.loads(report.read_text()) if report.exists() else {}
            row = {"run": number, "variant": variant, "requests": len(samples),
                   "p50": _util.percentile_ms(samples, 50), "p95": _util.percentile_ms(samples, 95),
                   "p99": _util.percentile_ms(samples, 99), "rps": len(samples) / wall,
                   "worker_rss": rss, "worker_peak": peak, "imported": imported,
                   "load": os.getloadavg()[0]}
            rows.append(row)
            print(f"| {number} | {variant} | {len(samples)} | {row['p50']:.1f} | {row['p95']:.1f} | "
                  f"{row['p99']:.1f} | {row['rps']:.1f} | {rss:.0f} | "
                  f"{imported.get('torch', 'not reported')} |")
    return rows


def postgres_memory() -> dict:
    """The server in service: shared buffers in use (``pg_buffercache``) and its processes' RSS
    (private memory summed; shared memory is mapped by all of them, so its largest mapping)."""
    from django.db import connection

    from shop_demo.embedded_db import DATA_DIR

    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_buffercache")
        cursor.execute("SELECT count(*) FILTER (WHERE relfilenode IS NOT NULL), count(*) FROM pg_buffercache")
        used, total = cursor.fetchone()
    figures = {"buffers_used_mb": used * 8 / 1024, "shared_buffers_mb": total * 8 / 1024}
    pidfile = DATA_DIR / "pgdata" / "postmaster.pid"
    if pidfile.exists():
        postmaster = int(pidfile.read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        private, shared = 0.0, 0.0
        for pid in [postmaster, *map(int, children)]:
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
                status = dict(line.split(":", 1) for line in lines)
            except OSError:
                continue
            private += int(status["RssAnon"].split()[0]) / 1024
            shared = max(shared, int(status["RssShmem"].split()[0]) / 1024)
        figures.update(processes=1 + len(children), private_rss_mb=private, shared_rss_mb=shared)
    return figures


# --------------------------------------------------------------------------- tables


def tables(results: dict) -> None:
    """The markdown tables: a column per size, then the settings per size."""
    sizes = list(results["sizes"])
    data = [results["sizes"][size] for size in sizes]
    head = "| | " + " | ".join(f"{int(size):,}" for size in sizes) + " |\n|---|" + "---:|" * len(sizes)
    mb = 2**20

    def row(label: str, values) -> None:
        print(f"| {label} | " + " | ".join(values) + " |")

    print(f"\n# The cost curve — {results['machine']}\n\n`{results['command']}`"
          + (f", wall time {results['wall'] / 60:.0f} min" if "wall" in results else ""))
    print("\n## Load and index build\n\n" + head)
    row("load (COPY, documents in SQL, VACUUM ANALYZE), s", [f"{d['load_s']:.0f}" for d in data])
    row("HNSW build, s", [f"{d['build']['seconds']:.0f}" for d in data])
    row("HNSW build: maintenance_work_mem, parallel workers",
        [f"{d['build']['maintenance_work_mem']}, {d['build']['workers']}" for d in data])
    row("HNSW build: graph left memory (pgvector notice)",
        ["yes" if d["build"]["fitted_tuples"] else "no" for d in data])
    row("lexicon refresh, s", [f"{d['lexicon_s']:.0f}" for d in data])
    starved = {size: d["starved_build"] for size, d in zip(sizes, data, strict=True) if "starved_build" in d}
    for size, build in starved.items():
        state = (f"{build['seconds']:.0f} s" if build["finished"]
                 else f"stopped at {build['seconds']:.0f} s, {build['progress']}")
        print(f"\nAt {int(size):,}, maintenance_work_mem {build['maintenance_work_mem']}: {state}; the graph "
              f"left memory after {build['fitted_tuples']} tuples "
              f"({build.get('graph_bytes_per_product', 0):.0f} bytes per product); "
              f"notices: {build['notices']}")

    print("\n## Memory, MB\n\n" + head)
    for name in data[0]["sizes"]:
        row(name, [f"{d['sizes'][name] / mb:,.0f}" for d in data])
    row("shared_buffers set for the measurements", [d["shared_buffers"] for d in data])
    row("shared buffers in use after the run (pg_buffercache)",
        [f"{d['postgres']['buffers_used_mb']:,.0f}" for d in data])
    row("PostgreSQL processes: private RSS summed",
        [f"{d['postgres'].get('private_rss_mb', float('nan')):,.0f}" for d in data])
    row("PostgreSQL processes: shared memory mapped (largest)",
        [f"{d['postgres'].get('shared_rss_mb', float('nan')):,.0f}" for d in data])
    row("gunicorn worker RSS after the DRF run (ONNX graph cache)",
        [f"{d['drf'][0]['worker_rss']:.0f}" if d["drf"] else "" for d in data])
    row("torch in the worker's sys.modules",
        [str(d["drf"][0]["imported"].get("torch", "?")) if d["drf"] else "" for d in data])
    web = results.get("web", {})
    if web:
        cached, building = web["cached graph"], web["onnx, building"]
        print(f"\nA fresh web process (bench/web_memory.py, ViT-B-32, 200 queries): cached graph "
              f"{cached['answered']:.0f} MB, torch imported: {cached['torch']}; the process that builds "
              f"the graph {building['answered']:.0f} MB (peak {building['peak']:.0f}).")

    print("\n## Library latency: `search()` + first page of 24, ms p50 / p95\n\n"
          + head.replace("| |", "| scope, variant |"))
    for key in data[0]["latency"]:
        if "noise floor" in key:
            continue
        row(key.replace(" | ", ", "), [_pair(d["latency"].get(key)) for d in data])
    row("contention: fixed CPU work (~1 ms idle)",
        [_pair(next(v for k, v in d["latency"].items() if "noise floor" in k)) for d in data])

    depths = " / ".join(map(str, data[0].get("recall_depths", [200, 100])))
    print(f"\n## Recall@10 of the vector leg vs exact scan: ef_search {depths} "
          f"({data[0].get('hnsw', 'm 16, ef_construction 64')})\n\n"
          + head.replace("| |", "| scope, query kind |"))
    for key in data[0]["recall"]:
        row(key.replace(" | ", ", "),
            [" / ".join(f"{value:.3f}" for value in d["recall"][key]) for d in data])

    print("\n## DRF, storefront, 1 client, ms (p50 / p95; target p95 ≤ 40)\n\n" + head)
    most = max(len(d["drf"]) for d in data)  # 0 with --drf-runs SIZE:0
    for index in range(most):
        label = next(d["drf"][index] for d in data if len(d["drf"]) > index)
        row(f"run {index + 1}: {label['variant']}",
            [f"{r['p50']:.1f} / {r['p95']:.1f} ({'met' if r['p95'] <= 40 else 'missed'})"
             if (r := (d["drf"][index] if len(d["drf"]) > index else None)) else "" for d in data])

    print("\n## Settings for a shop of this size (derived from the measurements above)\n\n" + head)
    for label, values in recommendations(results).items():
        row(label, values)


def _pair(value) -> str:
    return f"{value[0]:.1f} / {value[1]:.1f}" if value else ""


def recommendations(results: dict) -> dict[str, list[str]]:
    """What a shop of each size should set, and the measurement each follows from:

    - shared_buffers ≥ what a search reads (tables, indexes, TOAST) with 25 % headroom: below it,
      each new query copies pages from the OS cache (10-20 ms of a ~25 ms statement at 200k);
    - maintenance_work_mem ≥ the HNSW graph with 25 % headroom, so the build stays in memory; the
      graph's size is the measured bytes per product (from the starved build's notice) times the
      products, else the index's size on disk;
    - hnsw.ef_search: 200 (the default depth) while recall@10 of cluster-text queries without a
      filter is ≥ 0.95 at 200; 100 if that holds at 100 too (a shop may lower the depth); more
      otherwise;
    - m: 16 (the default) while ef_search 200 reaches 0.95; otherwise m 24-32 (not measured here).
    """
    sizes = list(results["sizes"])
    data = [results["sizes"][size] for size in sizes]
    per_product = next((d["starved_build"].get("graph_bytes_per_product") for d in data
                        if d.get("starved_build", {}).get("graph_bytes_per_product")), None)
    out: dict[str, list[str]] = {"shared_buffers": [], "maintenance_work_mem (index build)": [],
                                 "hnsw.ef_search (SEARCH DEPTH vector)": [], "HNSW m, ef_construction": [],
                                 "from: search reads / graph": []}
    for size, d in zip(sizes, data, strict=True):
        hot = d["sizes"]["search reads (prewarmed)"]
        graph = per_product * int(size) if per_product else d["sizes"]["HNSW index"]
        out["shared_buffers"].append(_setting(_round_up(hot * HEADROOM)))
        out["maintenance_work_mem (index build)"].append(_setting(_round_up(graph * HEADROOM)))
        recall = d["recall"].get(f"{bench.SCOPE_ALL} | cluster text", [0, 0])
        target = bench.TARGET_RECALL
        ef = "100" if recall[1] >= target else "200" if recall[0] >= target else "> 200"
        out["hnsw.ef_search (SEARCH DEPTH vector)"].append(f"{ef} (recall {recall[0]:.3f} / {recall[1]:.3f})")
        out["HNSW m, ef_construction"].append("16, 64" if recall[0] >= bench.TARGET_RECALL else "24-32, 128")
        out["from: search reads / graph"].append(f"{hot / 2**20:,.0f} MB / {graph / 2**20:,.0f} MB")
    return out


def _setting(size: int) -> str:
    return f"{size / 2**30:g}GB" if size % 2**30 == 0 else f"{size // 2**20}MB"


if __name__ == "__main__":
    main()
