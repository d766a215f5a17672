"""The cached ONNX text graph: a web process answers text queries without torch (issue 20).

Vectors from the cache equal the torch-built ONNX path's; a stale or missing entry is rebuilt
from the weights; and a fresh Django process with the cache answers a DRF text search without
ever importing torch.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from clip_search import encoders
from clip_search.encoders import EncoderSpec, graph_cache
from clip_search.encoders.graph_text import GraphTextEncoder
from clip_search.encoders.text import TextEncoder
from tests.broker import database_url
from tests.catalog import embedded_catalog
from tests.test_encoder_equivalence import QUERIES as TEXTS

ROOT = Path(__file__).resolve().parent.parent
QUERIES = [*TEXTS, "", "a red mug " * 40, "日本語 😀 café", "RED-MUG-00042 blue"]


@pytest.fixture
def onnx_settings(settings, tmp_path):
    """The ONNX int8 text backend with a graph cache of this test's own."""
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TEXT_ENCODER": {
        "BACKEND": "onnx", "QUANTIZE": True, "GRAPH_CACHE": str(tmp_path / "graphs")}}
    encoders.reset()
    yield tmp_path / "graphs"
    encoders.reset()


@pytest.mark.parametrize("quantize", [True, False], ids=["int8", "fp32"])
def test_cached_graph_gives_the_torch_built_vectors(demo_clip, onnx_settings, quantize):
    built = TextEncoder(demo_clip, backend="onnx", quantize=quantize, cache_size=0, keep_graph=True)
    expected = built.encode(QUERIES)
    folder = graph_cache.store(demo_clip.spec, built)
    assert folder is not None and built._onnx.graph is None  # the bytes are not kept once written
    assert graph_cache.find(demo_clip.spec, quantize, demo_clip.fingerprint) == folder
    cached = GraphTextEncoder(folder, demo_clip.spec, cache_size=4)
    assert np.abs(cached.encode(QUERIES) - expected).max() <= 1e-5
    assert cached.clip.fingerprint == demo_clip.fingerprint and cached.clip.dimension == demo_clip.dimension
    assert cached.clip.logit_scale == pytest.approx(demo_clip.logit_scale)
    # The query cache and its stats, as TextEncoder's.
    first = cached.encode_query("A red  mug")
    assert cached.encode_query("a red mug") is first
    assert cached.cache_info() == (1, 1, 4, 1)
    assert np.abs(first - built.encode(["a red mug"])[0]).max() <= 1e-5


@pytest.fixture
def model_copy(demo_model_dir, tmp_path):
    """The demo model in a folder of its own, whose files a test may touch."""
    folder = tmp_path / "model"
    shutil.copytree(demo_model_dir, folder)
    return folder


def test_a_missing_graph_is_built_once_and_then_read(model_copy, onnx_settings):
    spec = EncoderSpec(f"local-dir:{model_copy}")
    first = encoders.get_text_encoder(spec)
    assert isinstance(first, TextEncoder) and first.backend == "onnx"
    entries = [path.name for path in onnx_settings.iterdir()]
    assert sorted(entries) == sorted([graph_cache.entry_path(first.clip.fingerprint, True).name, "specs"])
    encoders.reset()
    again = encoders.get_text_encoder(spec, first.clip.fingerprint)
    assert isinstance(again, GraphTextEncoder)
    assert np.abs(again.encode(QUERIES) - first.encode(QUERIES)).max() <= 1e-5
    encoders.reset()  # without a fingerprint: the one last built for the spec
    assert isinstance(encoders.get_text_encoder(spec), GraphTextEncoder)


def test_a_stale_graph_is_never_used(model_copy, onnx_settings):
    spec = EncoderSpec(f"local-dir:{model_copy}")
    fingerprint = encoders.get_text_encoder(spec).clip.fingerprint
    folder = graph_cache.find(spec, True, fingerprint)
    assert folder is not None
    assert graph_cache.find(spec, True, "0" * 64) is None  # other weights: another entry
    assert graph_cache.find(spec, False, fingerprint) is None  # other options: another entry
    weights = next(model_copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # rewritten: newer than the graph
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert graph_cache.find(spec, True, fingerprint) is None
    encoders.reset()
    rebuilt = encoders.get_text_encoder(spec, fingerprint)
    assert isinstance(rebuilt, TextEncoder)  # loaded from the weights, then written again
    assert json.loads((folder / "meta.json").read_text())["sources"] == graph_cache.source_stamp(spec)
    assert not [path for path in onnx_settings.iterdir() if path.name.startswith(".")]  # no leftovers
    encoders.reset()
    assert isinstance(encoders.get_text_encoder(spec, fingerprint), GraphTextEncoder)


def test_other_families_keep_the_torch_path(demo_clip, onnx_settings):
    """A bidirectional (SigLIP-like) reading of the same tower is not cached."""
    built = TextEncoder(demo_clip, backend="onnx", quantize=True, cache_size=0, keep_graph=True)
    object.__setattr__(built, "tower", type(built.tower)("bidirectional", built.tower.module))
    assert "causal CLIP" in graph_cache.why_not_cached(built)
    assert graph_cache.store(demo_clip.spec, built) is None


WEB_SEARCH = """
import sys
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from rest_framework.test import APIClient
from clip_search import encoders
from clip_search.searchlog import flush
response = APIClient().get("/api/v1/search/", {"q": sys.argv[1]})
assert response.status_code == 200, response.content
results = response.json()["results"]
kinds = sorted({type(encoder).__name__ for encoder in encoders._text.values()})
flush()
open_clip = sorted(name for name in sys.modules if name.startswith("open_clip"))
print(len(results), kinds, "torch" in sys.modules, open_clip)
"""


@pytest.mark.django_db(transaction=True)
def test_a_web_process_with_the_cached_graph_never_imports_torch(django_db_blocker, demo_model_dir,
                                                                  tmp_path, settings):
    from shop_demo.catalog.generator import generate_catalog

    graphs = tmp_path / "graphs"
    with embedded_catalog(generate_catalog(40, seed=5), tmp_path / "media", django_db_blocker):
        settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "TEXT_ENCODER": {
            "BACKEND": "onnx", "QUANTIZE": True, "GRAPH_CACHE": str(graphs)}}
        call_command("clip_onnx")  # what a deploy runs before starting its web processes
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.onnx_web_settings",
               "DATABASE_URL": database_url(), "CLIP_SEARCH_GRAPH_CACHE": str(graphs),
               "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", WEB_SEARCH, "red mug"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        count, kinds, torch_imported, open_clip_modules = done.stdout.strip().splitlines()[-1].split(" ", 3)
        assert int(count) > 0
        assert kinds == "['GraphTextEncoder']"
        assert torch_imported == "False", done.stdout
        assert open_clip_modules == "[]"
