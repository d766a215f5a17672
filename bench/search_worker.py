"""Times ``search()`` of another checkout of clip_search against a bench database, for
``bench/storefront_scale.py``: the same queries through the code before a change and after it,
in one run, on the same data.

    DATABASE_URL=postgresql://…/<bench database> python bench/search_worker.py --tree /tmp/old-clip-search

Only ``--tree`` is importable: this file imports nothing from the checkout it lives in (its
folder holds no package). The tree's own ``shop_demo.settings`` is used, with ViT-B-32 random
weights (what the bench database was embedded with) and ``DATABASE_URL``.

It reads one JSON request per line on stdin and answers each with one JSON line on stdout:

- ``{"op": "search", "query": "red mug", "filter": {"is_public": true}, "vector": [...]}``:
  ``search(Product.objects.filter(**filter), text=query)`` and the first page of 24 products,
  timed in here (so the pipe is not). With ``vector`` the text encoder is replaced by that vector
  (database and ORM only); with ``"vector": null`` the query is encoded by the tree's ONNX int8
  text encoder, uncached (the whole library call).
- ``{"op": "api", "query": "red mug", "vector": [...]}``: ``GET /api/v1/search/?q=…`` through
  Django's test client, in process, the text encoder replaced by the vector.
- ``{"op": "explain", "query": "red mug", "filter": {...}, "vector": [...]}``: EXPLAIN (ANALYZE,
  BUFFERS) of the fused statement that search sends, after its ``SET LOCAL``s:
  ``{"seconds": <server-side execution time>, "plan": "…"}``.
- ``{"op": "quit"}``.

Answer: ``{"seconds": …, "hits": <fused hits>, "page": [pk, …]}``, or ``{"error": "…"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from types import SimpleNamespace
from unittest import mock

PAGE_SIZE = 24
ONNX_INT8 = {"BACKEND": "onnx", "QUANTIZE": True}


class GivenVector:
    """Stands in for the text encoder: the vector the parent computed for this query."""

    def __init__(self, fingerprint: str) -> None:
        self.clip = SimpleNamespace(fingerprint=fingerprint)
        self.vector = None

    def encode(self, texts):
        import numpy as np

        return np.stack([self.vector for _ in texts])

    def encode_query(self, text):
        return self.vector

    def cache_clear(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", required=True, help="the clip_search checkout to time")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.tree))
    os.environ["CLIP_SEARCH_MODEL"], os.environ["CLIP_SEARCH_PRETRAINED"] = "ViT-B-32", "random"
    os.environ["DJANGO_SETTINGS_MODULE"] = "shop_demo.settings"
    os.environ["DJANGO_DEBUG"] = "0"
    import django

    django.setup()
    logging.disable(logging.WARNING)
    from django.conf import settings
    from django.db import connection
    from django.test import Client, override_settings

    import clip_search
    from clip_search import encoders
    from clip_search.encoders import get_clip, text_encoder_for
    from clip_search.indexing import spec_for
    from clip_search.models import EncoderModel
    from clip_search.search import search
    from shop_demo.catalog.models import Product

    assert os.path.dirname(clip_search.__file__).startswith(os.path.abspath(args.tree)), clip_search.__file__
    connection.settings_dict["CONN_MAX_AGE"] = None  # one connection for the run, as a web worker keeps
    encoder = EncoderModel.objects.get(is_active=True)
    given = GivenVector(encoder.fingerprint)
    with override_settings(CLIP_SEARCH={**settings.CLIP_SEARCH, "TEXT_ENCODER": ONNX_INT8}):
        onnx = text_encoder_for(get_clip(spec_for(encoder)))
    assert (onnx.backend, onnx.quantized) == ("onnx", True), (onnx.backend, onnx.quantized)
    onnx.encode(["warm up"])
    client = Client()
    rates = {"clip_search": "1000000/min", "clip_search_image": "1000000/min",
             "clip_search_suggest": "1000000/min"}
    override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}).enable()
    print(json.dumps({"ready": clip_search.__file__}), flush=True)

    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "quit":
                break
            encoder_now = onnx if request.get("vector") is None else given
            given.vector = request.get("vector")
            encoder_now.cache_clear()
            def current(spec=None, fingerprint=None, e=encoder_now):
                return e

            with mock.patch.object(encoders, "get_text_encoder", current):
                if request["op"] == "search":
                    queryset = Product.objects.filter(**request.get("filter", {}))
                    started = time.perf_counter()
                    results = search(queryset, text=request["query"])
                    page = list(results.select_related("brand", "category")[:PAGE_SIZE])
                    seconds = time.perf_counter() - started
                    info = results.search_info
                    assert not info.degraded, info.degraded
                    answer = {"seconds": seconds, "hits": len(info.hits), "page": [p.pk for p in page]}
                elif request["op"] == "explain":
                    queryset = Product.objects.filter(**request.get("filter", {}))
                    query = request["query"]
                    seconds, plan = explain_fused(lambda q=queryset, t=query: list(search(q, text=t)[:1]))
                    answer = {"seconds": seconds, "plan": plan}
                elif request["op"] == "api":
                    started = time.perf_counter()
                    response = client.get("/api/v1/search/", {"q": request["query"]})
                    seconds = time.perf_counter() - started
                    assert response.status_code == 200, response.content[:300]
                    body = response.json()
                    assert not body["degraded"], body["degraded"]
                    answer = {"seconds": seconds, "hits": body["count"],
                              "page": [hit["id"] for hit in body["results"]]}
                else:
                    raise ValueError(f"unknown op {request['op']!r}")
        except Exception:
            answer = {"error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)


def explain_fused(call) -> tuple[float, str]:
    """Server-side time (s) and plan of the fused statement ``call`` sends (the one with the legs'
    CTEs), run again under EXPLAIN (ANALYZE, BUFFERS) after the ``set_config``s before it."""
    import re

    from django.db import connection, transaction

    statements = []

    def record(execute, sql_text, params, many, context):
        statements.append((sql_text, params))
        return execute(sql_text, params, many, context)

    with connection.execute_wrapper(record):
        call()
    fused = next(i for i, (text, _params) in enumerate(statements) if "_leg AS MATERIALIZED" in text)
    with transaction.atomic(), connection.cursor() as cursor:
        for text, params in statements[:fused]:
            if "set_config" in text:
                cursor.execute(text, params)
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, SETTINGS) " + statements[fused][0], statements[fused][1])
        lines = [line for (line,) in cursor.fetchall()]
    total = next(float(re.search(r"([\d.]+) ms", line).group(1)) for line in lines
                 if line.startswith("Execution Time"))
    plan = re.sub(r"'\[[-0-9.e,]{200,}\]'", "'[…the query vector…]'", "\n".join(lines))
    return total / 1000, plan


if __name__ == "__main__":
    main()
