"""The demo's settings with the ONNX text backend reading graphs from ``CLIP_SEARCH_GRAPH_CACHE``
(tests/test_graph_cache.py runs a web process on them)."""

import os

from shop_demo.settings import *  # noqa: F403
from shop_demo.settings import CLIP_SEARCH

CLIP_SEARCH = {**CLIP_SEARCH, "TEXT_ENCODER": {"BACKEND": "onnx", "QUANTIZE": True,
                                               "GRAPH_CACHE": os.environ["CLIP_SEARCH_GRAPH_CACHE"]}}
