"""Memory of a web process answering text queries: cached ONNX graph (no torch) vs torch (issue 20).

Each figure is a fresh process (``--probe``) that imports what a Django web process imports for a
search (``clip_search.search``, the app's models), gets the query encoder the way ``search()``
does (``get_text_encoder``) and answers N distinct queries through its LRU (``encode_query``),
then reports its RSS (``/proc/self/status``: VmRSS, VmHWM) and whether torch was imported.
The database legs of a search are left out: they cost the same in every variant.

Variants, per model:
- ``cached graph``: ``BACKEND="onnx", QUANTIZE=True`` with the graph already in the cache
  (``manage.py clip_onnx``; here the ``onnx, building`` probe writes it first);
- ``onnx, building``: the same settings without a cache: loads the model in torch, builds the
  graph, writes it (what the first web process does when nobody ran ``clip_onnx``);
- ``torch``: ``BACKEND="torch"`` (the default), the text tower only.

Models: the demo's trained CLIP (``.data/models/demo-clip``, run ``manage.py demo_model`` once)
and ViT-B-32 with random weights (``PRETRAINED="random"``: no download; same shapes and memory).

    PYTHONPATH=. python bench/web_memory.py [--queries 200] [--models demo,vit-b-32]

Measured 2026-12-07, 2 cores, torch 2.14, onnxruntime 1.32, 200 queries (MB RSS after them):

| model | cached graph (no torch) | onnx, building | torch |
|---|---:|---:|---:|
| demo (64-d, 3-layer towers) | 164 | 1123 | 1089 |
| ViT-B-32, random weights | 260 | 1507 (peak 1709) | 1341 (peak 1709) |
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CLIP_SEARCH_DATA_DIR", ROOT / ".data"))
MODELS = {
    "demo": {"MODEL": f"local-dir:{DATA_DIR / 'models' / 'demo-clip'}", "PRETRAINED": ""},
    "vit-b-32": {"MODEL": "ViT-B-32", "PRETRAINED": "random"},
}
VARIANTS = {
    "onnx, building": {"BACKEND": "onnx", "QUANTIZE": True},
    "cached graph": {"BACKEND": "onnx", "QUANTIZE": True},
    "torch": {"BACKEND": "torch", "QUANTIZE": False},
}
WORDS = ["red", "blue", "leather", "cotton", "mug", "backpack", "sneaker", "lamp", "wooden", "chair",
         "waterproof", "jacket", "ceramic", "bowl", "silver", "watch", "kids", "summer", "hat", "bottle"]


def _memory_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))


def probe(model: str, variant: str, graphs: str, queries: int) -> None:
    """Run in a fresh process: what a web worker does for its first N text searches."""
    import logging
    import random

    import django
    from django.conf import settings

    settings.configure(
        USE_I18N=False, USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                        "clip_search"],
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}},
        CLIP_SEARCH={**MODELS[model], "TEXT_ENCODER": {**VARIANTS[variant], "GRAPH_CACHE": graphs}})
    django.setup()
    logging.disable(logging.WARNING)
    figures = {"start": _memory_mb()[0]}
    import clip_search.api.views  # noqa: F401  (what the web process has imported before a search)
    import clip_search.search  # noqa: F401
    from clip_search.encoders import get_text_encoder

    figures["imports"] = _memory_mb()[0]
    encoder = get_text_encoder()
    figures["loaded"] = _memory_mb()[0]
    rng = random.Random(0)
    for _ in range(queries):
        encoder.encode_query(" ".join(rng.sample(WORDS, rng.randint(1, 4))))
    figures["answered"], figures["peak"] = _memory_mb()
    figures.update(encoder=type(encoder).__name__, torch="torch" in sys.modules,
                   hits=encoder.cache_info().hits)
    print(json.dumps(figures))


def run_probe(model: str, variant: str, graphs: str, queries: int = 200) -> dict:
    """``probe`` in a fresh process (what a new web worker is), its figures as a dict.

    ``bench/cost_curve.py`` calls it too: ``"onnx, building"`` writes the graph into ``graphs``
    for the servers it starts, ``"cached graph"`` is their encoder side alone."""
    command = [sys.executable, __file__, "--queries", str(queries), "--probe", model, variant, graphs]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--models", default="demo,vit-b-32")
    parser.add_argument("--probe", nargs=3, metavar=("MODEL", "VARIANT", "GRAPHS"))
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe, args.queries)
        return
    print(f"## Web process memory after {args.queries} text queries (fresh process each), MB\n")
    print("| model | variant | encoder | torch imported | after imports | loaded | after queries | peak |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as graphs:
            for variant in VARIANTS:
                try:
                    f = run_probe(model, variant, graphs, args.queries)
                except RuntimeError as error:
                    print(f"| {model} | {variant} | failed: {error} |||||")
                    continue
                print(f"| {model} | {variant} | {f['encoder']} | {'yes' if f['torch'] else 'no'} | "
                      f"{f['imports']:.0f} | {f['loaded']:.0f} | {f['answered']:.0f} | {f['peak']:.0f} |")


if __name__ == "__main__":
    main()
