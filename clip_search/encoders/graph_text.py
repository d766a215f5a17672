"""Query text → vector from a cached ONNX graph (``graph_cache``): ONNX Runtime, numpy and the
torch-free BPE tokenizer (``bpe``), never torch.

The same computation as ``TextEncoder(backend="onnx")`` for the causal CLIP family: tokens cut
after the batch's last end-of-text token, the embedding look-up in numpy, the graph, L2
normalisation. ``tests/test_graph_cache.py`` holds its vectors to the torch-built path's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip_search.encoders.bpe import ClipBpeTokenizer
from clip_search.encoders.graph_cache import ort_session
from clip_search.encoders.query_cache import QueryCache, warn_truncated
from clip_search.encoders.spec import EncoderSpec


@dataclass(frozen=True)
class GraphClip:
    """What callers read of a ``LoadedClip`` (``text_encoder.clip``), from the entry's meta."""

    spec: EncoderSpec
    fingerprint: str
    dimension: int
    logit_scale: float
    logit_bias: float | None
    tokenizer: ClipBpeTokenizer
    towers: str = "text"
    config: dict[str, Any] = field(default_factory=dict)


class GraphTextEncoder(QueryCache):
    """``encode`` / ``encode_query`` / ``cache_info`` as ``TextEncoder``'s, from ``folder``."""

    backend = "onnx"

    def __init__(self, folder: Path, spec: EncoderSpec, *, threads: int | None = None,
                 cache_size: int = 2048) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.folder = folder
        self.quantized = bool(meta["quantize"])
        self.context_length = int(meta["context_length"])
        self.tokenizer = ClipBpeTokenizer(context_length=self.context_length, clean_mode=meta["clean"])
        self.clip = GraphClip(spec=spec, fingerprint=meta["fingerprint"], dimension=int(meta["dimension"]),
                              logit_scale=float(meta["logit_scale"]), logit_bias=meta["logit_bias"],
                              tokenizer=self.tokenizer, config={"model": spec.model, "graph": str(folder)})
        self._pool_type, self._eos_id = meta["pool_type"], meta["eos_id"]
        # Memory-mapped: pages of the token table are shared by every process on the machine
        # and only the rows of words actually searched are read.
        self._embedding = np.load(folder / "token_embedding.npy", mmap_mode="r")
        self._positions = np.load(folder / "positional_embedding.npy")
        self._session = ort_session(str(folder / "text.onnx"), threads or min(2, os.cpu_count() or 1))
        self._init_cache(cache_size)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts))
        warn_truncated(texts, [int(row[-1]) != 0 for row in tokens], self.context_length)
        return tokens

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.clip.dimension), dtype=np.float32)
        tokens = self.tokenize(texts)
        if self._pool_type == "argmax":
            pool_at = tokens.argmax(axis=-1)
        else:
            pool_at = (tokens == self._eos_id).argmax(axis=-1)
        length = int(pool_at.max()) + 1
        x = self._embedding[tokens[:, :length]]
        x += self._positions[:length]
        features = self._session.run(["features"], {"x": x, "pool_at": pool_at.reshape(-1, 1)})[0]
        norms = np.linalg.norm(features, axis=-1, keepdims=True)
        return (features / np.maximum(norms, 1e-12)).astype(np.float32)
