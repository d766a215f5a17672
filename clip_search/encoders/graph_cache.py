"""The text tower's ONNX graph on disk, so that a web process answers queries without torch.

Building the graph needs the model in torch (``onnx_text``), and torch alone is most of a
serving process's memory. A process that built one (``manage.py clip_onnx``, or the first web
process with ``TEXT_ENCODER["BACKEND"] = "onnx"``) writes it here; later processes run it with
ONNX Runtime, numpy and a torch-free tokenizer (``graph_text.GraphTextEncoder``).

An entry is a folder named by the weights' fingerprint (what ``EncoderModel.fingerprint``
holds, sha256 of the loaded tensors) and the graph options (int8 or fp32, weight format,
``GRAPH_VERSION``): ``text.onnx``, the embedding tables (``.npy``, memory-mapped) and
``meta.json``. A small pointer per spec names the fingerprint last built for it, for callers
that do not know the fingerprint. An entry is used only when it was written whole (folders are
renamed into place) and the weights' files on disk are the ones it was built from (size and
modification time of a ``local-dir:`` / ``hf-clip:`` folder's files or of a checkpoint
file); otherwise the caller loads the model in torch, as without a cache, and rewrites it.

Only the causal CLIP text family with open_clip's BPE tokenizer is cached (``store`` says why
not otherwise): SigLIP and Hugging Face towers keep the torch path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clip_search.encoders.spec import EncoderSpec
from clip_search.weights import LOCAL_FOLDER_PREFIXES

logger = logging.getLogger(__name__)

# Bump when ``onnx_text`` builds a different graph from the same weights: old entries are then
# never read again.
GRAPH_VERSION = 1
WEIGHTS = "s7"
FILES = ("text.onnx", "token_embedding.npy", "positional_embedding.npy", "meta.json")
# open_clip's clean functions by name → the mode ``bpe.ClipBpeTokenizer`` runs.
CLEAN_FUNCTIONS = {"_clean_lower": "lower", "_clean_whitespace": "whitespace",
                   "_clean_canonicalize": "canonicalize"}
# Held to open_clip's tokenizer before an entry is written (``tests/test_bpe.py`` has many more).
PROBES = ("a red mug", "Café crème, 2 × 500 ml!", "日本語 😀", "")


def ort_session(graph: bytes | str, threads: int):
    """An ONNX Runtime session of a serialized graph or a graph file, ``threads`` intra-op."""
    try:
        import onnxruntime as ort
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("The ONNX encoder backend needs `pip install onnxruntime onnx`.") from error
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Pool threads spin briefly between operators (ORT's default): with 2 threads a query
    # takes ~7 ms instead of ~10 ms when they have to be woken for each of its ~75 operators.
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def cache_root() -> Path:
    """``TEXT_ENCODER["GRAPH_CACHE"]``, else ``$XDG_CACHE_HOME/clip_search/onnx-text``."""
    from clip_search.conf import clip_settings

    configured = clip_settings.TEXT_ENCODER["GRAPH_CACHE"]
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clip_search" / "onnx-text"


def _options(quantize: bool) -> str:
    return f"{'int8-' + WEIGHTS if quantize else 'fp32'}-v{GRAPH_VERSION}"


def entry_path(fingerprint: str, quantize: bool) -> Path:
    return cache_root() / f"{fingerprint}-{_options(quantize)}"


def _pointer_path(spec: EncoderSpec, quantize: bool) -> Path:
    name = hashlib.sha256(json.dumps([spec.model, spec.pretrained, spec.precision]).encode()).hexdigest()
    return cache_root() / "specs" / f"{name[:32]}-{_options(quantize)}.json"


def source_stamp(spec: EncoderSpec) -> list[list[Any]]:
    """Name, size and modification time of the files the weights are read from ([] for an
    open_clip tag or the hub, whose downloads do not change under a name)."""
    if spec.model.startswith(LOCAL_FOLDER_PREFIXES):
        folder = Path(spec.model.split(":", 1)[1]).expanduser()
        files = sorted(path for path in folder.iterdir() if path.is_file()) if folder.is_dir() else []
    elif spec.pretrained and Path(spec.pretrained).expanduser().is_file():
        files = [Path(spec.pretrained).expanduser()]
    else:
        files = []
    return [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in files]


def find(spec: EncoderSpec, quantize: bool, fingerprint: str | None = None) -> Path | None:
    """The valid entry for these weights and options, or None (missing, partial or stale).
    Without ``fingerprint``, the one last built for ``spec``."""
    try:
        if fingerprint is None:
            fingerprint = json.loads(_pointer_path(spec, quantize).read_text())["fingerprint"]
        folder = entry_path(fingerprint, quantize)
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((folder / name).is_file() for name in FILES):
        return None
    if meta.get("sources") != source_stamp(spec) or meta.get("fingerprint") != fingerprint:
        logger.info("ONNX text graph %s is stale (the weights' files changed); not used.", folder.name)
        return None
    return folder


def store(spec: EncoderSpec, encoder: Any) -> Path | None:
    """Write ``encoder``'s graph (a ``TextEncoder`` built with ``keep_graph=True``) as the entry of
    its weights; its ``graph`` bytes are dropped afterwards. None when this encoder cannot be
    served from a cache (the reason is logged) or the folder cannot be written."""
    onnx = getattr(encoder, "_onnx", None)
    graph = getattr(onnx, "graph", None)
    reason = why_not_cached(encoder) if graph is not None else "no ONNX graph was built"
    if reason:
        logger.info("ONNX text graph not cached: %s; this process keeps torch.", reason)
        return None
    onnx.graph = None
    tower, clip = encoder.tower, encoder.clip
    meta = {
        "fingerprint": clip.fingerprint, "model": spec.model, "pretrained": spec.pretrained,
        "dimension": clip.dimension, "logit_scale": clip.logit_scale, "logit_bias": clip.logit_bias,
        "context_length": encoder.context_length, "clean": CLEAN_FUNCTIONS[clip.tokenizer.clean_fn.__name__],
        "pool_type": tower.pool_type, "eos_id": tower.eos_id, "quantize": encoder.quantized,
        "weights": onnx.weights, "version": GRAPH_VERSION, "sources": source_stamp(spec),
    }
    folder = entry_path(clip.fingerprint, encoder.quantized)
    try:
        _write_entry(folder, graph, onnx, meta)
        _write_atomic(_pointer_path(spec, encoder.quantized),
                      json.dumps({"fingerprint": clip.fingerprint}).encode())
    except OSError as error:
        logger.warning("Could not write the ONNX text graph to %s: %s", folder, error)
        return None
    logger.info("ONNX text graph of %s written to %s", spec.model, folder)
    return folder


def why_not_cached(encoder: Any) -> str:
    """Why this encoder's queries cannot come from ``GraphTextEncoder`` ('' when they can)."""
    from clip_search.encoders.text_tower import CAUSAL

    if encoder.tower.family != CAUSAL or encoder.tower.pool_type not in ("argmax", "eos"):
        return f"only the causal CLIP text family is cached, not {encoder.tower.family}"
    tokenizer = encoder.clip.tokenizer
    if type(tokenizer).__name__ != "SimpleTokenizer" or getattr(tokenizer, "reduction_fn", None):
        return f"the tokenizer {type(tokenizer).__name__} is not open_clip's plain CLIP BPE"
    mode = CLEAN_FUNCTIONS.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if mode is None:
        return "the tokenizer cleans text in a way the torch-free tokenizer does not"
    from clip_search.encoders.bpe import ClipBpeTokenizer

    ours = ClipBpeTokenizer(context_length=encoder.context_length, clean_mode=mode)
    if (ours(list(PROBES)) != tokenizer(list(PROBES)).numpy()).any():
        return "the torch-free tokenizer gives other ids than the model's"
    return ""


def _write_entry(folder: Path, graph: bytes, onnx: Any, meta: dict[str, Any]) -> None:
    """The whole folder written beside its place, then renamed into it: a reader sees all or none."""
    import numpy as np

    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    temporary.chmod(0o755)  # mkdtemp's 0700 would hide it from web processes of another user
    try:
        (temporary / "text.onnx").write_bytes(graph)
        np.save(temporary / "token_embedding.npy", onnx._embedding)
        np.save(temporary / "positional_embedding.npy", onnx._positions)
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():  # stale (its sources changed): set aside, then replaced
            old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
            os.rename(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(temporary, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another process's entry: a real failure
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.chmod(temporary, 0o644)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
