"""Query text → L2-normalised CLIP vector, fast enough to run inside a web request.

The CLIP text transformer is causal and pools at the end-of-text token, so tokens after the
batch's last EOT never influence the result: running the transformer on ``tokens[:, :L]``
(L = last EOT + 1) gives the same vector as stock ``encode_text`` for a fraction of the work
(a 5-word query is ~8 of 77 positions). Repeated queries come from an LRU cache.
Other families need other rules (``text_tower``): SigLIP's bidirectional tower runs at full
length through the same rebuilt transformers; a Hugging Face tower (multilingual models) runs
only its own forward, without trailing padding; anything else runs ``encode_text`` as it is.

Backends (``backend=``), all measured against stock ``encode_text`` in
``tests/test_encoder_equivalence.py`` and ``bench/text_encoder.py``:
- ``"torch"`` (default): the model's own modules, fp32: the exact reference. ``quantize=True``
  runs an int8 copy (per-channel dynamic quantisation of every Linear, the attention's
  projections included: ``nn.MultiheadAttention`` is rebuilt as plain Linears + SDPA so they
  can be quantised).
- ``"onnx"``: the blocks as one lean ONNX Runtime graph (``clip_search.encoders.onnx_text``),
  fp32, or int8 with ``quantize=True`` (the fastest path for single queries on a CPU);
  ``threads`` sets that session's intra-op threads without touching torch's (default 2, or
  1 on a single-core machine: measured fastest for one query, see bench/README.md).
  A web process whose graph was cached (``graph_cache``, ``manage.py clip_onnx``) runs
  ``graph_text.GraphTextEncoder`` instead, without torch; that covers the causal CLIP family
  only (SigLIP and Hugging Face towers stay here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clip_search.encoders.loader import LoadedClip
from clip_search.encoders.query_cache import CACHE_LOG_EVERY, CacheInfo, QueryCache, warn_truncated
from clip_search.encoders.text_tower import HF, describe

logger = logging.getLogger(__name__)


__all__ = ["BACKENDS", "CACHE_LOG_EVERY", "CacheInfo", "TextEncoder", "quantized_transformer"]

BACKENDS = ("torch", "onnx")


class TextEncoder(QueryCache):
    """``tower``: the model's text tower and which shortcut is exact for it (``text_tower``). A
    backend or ``quantize`` the tower does not support falls back to the exact path, with the
    reason in the log; ``backend`` and ``quantized`` then say what runs."""

    def __init__(self, clip: LoadedClip, *, quantize: bool = False, cache_size: int = 2048,
                 backend: str = "torch", threads: int | None = None, keep_graph: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"Unknown text encoder backend {backend!r}: use one of {BACKENDS}.")
        self.clip = clip
        self.context_length = int(getattr(clip.tokenizer, "context_length", 77))
        self.tower = describe(clip.model)
        if (quantize or backend != "torch") and not self.tower.rebuilt:
            logger.warning("Text encoder: %s%s is not rebuilt for this text tower (%s); running its "
                           "own fp32 forward.", backend, " int8" if quantize else "", self.tower.reason)
            quantize, backend = False, "torch"
        self.quantized = bool(quantize)
        self.backend = backend
        self._onnx = None
        if backend == "onnx":
            self._onnx = self._onnx_tower(quantize, threads, keep_graph)
            if self._onnx is None:
                self.backend = "torch"
        if self.tower.rebuilt:
            transformer = self.tower.module.transformer
            self._transformer = quantized_transformer(transformer, causal=self.tower.causal) if (
                self.backend == "torch" and quantize) else transformer
        self._init_cache(cache_size)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids, at most ``context_length`` each; longer text is cut with a warning."""
        tokenizer = self.clip.tokenizer
        tokens = tokenizer(list(texts))
        if hasattr(tokenizer, "truncated"):  # a tokenizer that pads with its end token says itself
            cut = tokenizer.truncated(list(texts))
        else:
            pad = _pad_id(tokenizer)
            cut = [int(row[-1]) not in (0, pad) for row in tokens]
        warn_truncated(texts, cut, self.context_length)
        return tokens

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.clip.dimension), dtype=np.float32)
        tokens = self.tokenize(texts)
        if self.tower.rebuilt:
            features = self._forward(tokens)
        elif self.tower.family == HF:
            features = self.clip.model.encode_text(self.tower.unpadded(tokens))
        else:
            features = self.clip.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1).numpy()

    def _onnx_tower(self, quantize: bool, threads: int | None, keep_graph: bool = False):
        from clip_search.encoders.onnx_text import OnnxTextTower, UnsupportedTextTower

        try:
            return OnnxTextTower(self.tower.module, quantize=quantize, causal=self.tower.causal,
                                 threads=threads or min(2, os.cpu_count() or 1), keep_graph=keep_graph)
        except UnsupportedTextTower as error:
            logger.warning("ONNX text backend cannot rebuild this text tower (%s); using torch.", error)
            return None

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` on the columns that reach the pooled token (all of them for
        a bidirectional tower), with the rebuilt transformer."""
        tower = self.tower.module
        pool_at = self.tower.pool_positions(tokens)
        length = self.tower.length(tokens, pool_at)
        if self._onnx is not None:
            return torch.from_numpy(self._onnx.encode(tokens[:, :length].numpy(), pool_at.numpy()))
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens[:, :length]).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        mask = tower.attn_mask[:length, :length] if self.tower.causal else None
        x = self._transformer(x, attn_mask=mask)
        x = tower.ln_final(x)
        x = x[torch.arange(x.shape[0]), pool_at]
        projection = tower.text_projection
        if projection is None:
            return x
        if isinstance(projection, torch.nn.Module):
            return projection(x)
        return x @ projection


class FusedBlock(torch.nn.Module):
    """An open_clip ``ResidualAttentionBlock`` with its attention as plain Linears + SDPA (same
    arithmetic), so that dynamic quantisation reaches the attention projections too:
    ``nn.MultiheadAttention`` keeps them as raw parameters that ``quantize_dynamic`` skips.
    ``causal``: the text tower's mask; image towers attend both ways. Batch first."""

    def __init__(self, block: torch.nn.Module, *, causal: bool) -> None:
        super().__init__()
        attn = block.attn
        self.heads, self.causal = attn.num_heads, causal
        self.ln_1, self.ls_1, self.ln_2, self.mlp, self.ls_2 = (
            block.ln_1, block.ls_1, block.ln_2, block.mlp, block.ls_2)
        self.qkv = _linear(attn.in_proj_weight, attn.in_proj_bias)
        self.out = _linear(attn.out_proj.weight, attn.out_proj.bias)

    @staticmethod
    def supports(block: torch.nn.Module) -> bool:
        attn = getattr(block, "attn", None)
        return (type(block).__name__ == "ResidualAttentionBlock" and not hasattr(block, "ln_1_kv")
                and isinstance(attn, torch.nn.MultiheadAttention) and attn._qkv_same_embed_dim
                and hasattr(block, "mlp"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.ln_1(x)).view(batch, length, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.ls_1(self.out(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight.data = weight.detach().clone()
    if bias is not None:
        linear.bias.data = bias.detach().clone()
    return linear.requires_grad_(False)


class FusedTransformer(torch.nn.Module):
    """Drop-in for an open_clip ``Transformer`` built from ``FusedBlock`` copies: same call
    (``forward(x, attn_mask=None)`` with ``x`` (N, L, D) whatever its blocks' internal layout,
    as in open_clip ≥ 2.24; a causal tower applies its mask itself)."""

    def __init__(self, transformer: torch.nn.Module, *, causal: bool) -> None:
        import copy

        super().__init__()
        self.resblocks = torch.nn.ModuleList(
            FusedBlock(copy.deepcopy(block), causal=causal) for block in transformer.resblocks)
        self.eval()

    @staticmethod
    def supports(transformer: torch.nn.Module) -> bool:
        blocks = list(getattr(transformer, "resblocks", []))
        return bool(blocks) and all(FusedBlock.supports(block) for block in blocks)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def quantized_transformer(transformer: torch.nn.Module, *, causal: bool) -> torch.nn.Module:
    """An int8 (per-channel dynamic) copy of an open_clip ``Transformer``, every Linear
    included when its blocks can be fused; the original weights are untouched."""
    import copy

    if FusedTransformer.supports(transformer):
        return _quantize_dynamic(FusedTransformer(transformer, causal=causal))
    return _quantize_dynamic(copy.deepcopy(transformer))  # MLP Linears only


def _quantize_dynamic(module: torch.nn.Module) -> torch.nn.Module:
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices; the kernels are current
        return quantize_dynamic(module, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, inplace=True)


def _pad_id(tokenizer) -> int:
    """The pad id of open_clip's tokenizers (0), ``hf_tokenizer``'s or a transformers one's."""
    for owner in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        pad = getattr(owner, "pad_token_id", None)
        if pad is not None:
            return int(pad)
    return 0
