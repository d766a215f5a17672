"""ONNX Runtime backend for CLIP's transformers (optional: ``pip install onnxruntime onnx``).

A query is a handful of tokens, so a single query is bound by reading the text transformer's
weights (ViT-B-32: 151 MB fp32, 38 MB 8-bit) and by per-operator overhead, not by arithmetic.
This module builds a lean ONNX graph straight from the loaded weights (no ``torch.onnx``
export, no ``onnxruntime.quantization``): per residual block one fused ``Attention`` (causal
for text), one ``MatMul`` for the output projection, a fused ``SkipLayerNormalization``
(residual add + bias + LayerNorm), and the MLP (``MatMul`` + ``BiasGelu`` + ``MatMul``): ~6
operators per block where ``torch.onnx.export`` gives ~40. With ``quantize=True`` every weight
matrix is stored as 8-bit integers with one scale per output channel (``QAttention`` /
``DynamicQuantizeMatMul``, activations quantised per call), which reads a quarter of the bytes.

- ``OnnxTextTower``: the whole text tower after the embedding look-up (blocks, pooling,
  ``ln_final``, projection, the last two kept fp32), for ``TextEncoder(backend="onnx")``.
- ``OnnxTransformer``: a drop-in ``nn.Module`` for an open_clip ``Transformer`` (used for the
  image tower by ``ImageEncoder(backend="onnx")``).
Both are checked against stock open_clip in ``tests/test_encoder_equivalence.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clip_search.encoders.graph_cache import ort_session as _session

MS_DOMAIN = "com.microsoft"


class UnsupportedTextTower(ValueError):
    """The tower is not the pre-LN open_clip transformer this backend rebuilds (callers fall
    back to torch)."""


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


def _block_weights(block: torch.nn.Module) -> dict[str, Any]:
    """One ``ResidualAttentionBlock``'s weights, laid out for ONNX (``x @ W``), LayerScale folded."""
    attn = getattr(block, "attn", None)
    if (not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim
            or attn.bias_k is not None or attn.add_zero_attn):
        raise UnsupportedTextTower("blocks must use a plain torch.nn.MultiheadAttention")
    if hasattr(block, "ln_1_kv") or hasattr(block, "ln_attn"):
        raise UnsupportedTextTower("cross-attention / scaled-cosine blocks are not supported")
    mlp = block.mlp
    if not all(hasattr(mlp, name) for name in ("c_fc", "gelu", "c_proj")):
        raise UnsupportedTextTower("blocks must have a c_fc → GELU → c_proj MLP")
    act = mlp.gelu
    if isinstance(act, torch.nn.GELU) and act.approximate == "none":
        activation = "gelu"
    elif type(act).__name__ == "QuickGELU":
        activation = "quick_gelu"
    else:
        raise UnsupportedTextTower(f"unsupported MLP activation {type(act).__name__}")
    for ln in (block.ln_1, block.ln_2):
        if not isinstance(ln, torch.nn.LayerNorm) or ln.weight is None:
            raise UnsupportedTextTower("blocks must use affine LayerNorm")

    def layer_scale(module: torch.nn.Module, width: int) -> np.ndarray:
        if isinstance(module, torch.nn.Identity):
            return np.ones(width, np.float32)
        gamma = getattr(module, "gamma", None)
        if type(module).__name__ != "LayerScale" or gamma is None:
            raise UnsupportedTextTower(f"unsupported layer scale {type(module).__name__}")
        return _numpy(gamma)

    width = attn.embed_dim
    ls_1, ls_2 = layer_scale(block.ls_1, width), layer_scale(block.ls_2, width)
    zeros = np.zeros(width, np.float32)
    in_bias = attn.in_proj_bias
    out_bias = attn.out_proj.bias
    return {
        "heads": attn.num_heads,
        "activation": activation,
        "ln_1": (_numpy(block.ln_1.weight), _numpy(block.ln_1.bias), float(block.ln_1.eps)),
        "ln_2": (_numpy(block.ln_2.weight), _numpy(block.ln_2.bias), float(block.ln_2.eps)),
        "qkv_w": _numpy(attn.in_proj_weight).T.copy(),  # (width, 3 width): [q | k | v]
        "qkv_b": _numpy(in_bias) if in_bias is not None else np.zeros(3 * width, np.float32),
        "out_w": _numpy(attn.out_proj.weight).T * ls_1[None, :],
        "out_b": (_numpy(out_bias) if out_bias is not None else zeros) * ls_1,
        "fc_w": _numpy(mlp.c_fc.weight).T.copy(),
        "fc_b": _numpy(mlp.c_fc.bias) if mlp.c_fc.bias is not None else np.zeros(
            mlp.c_fc.out_features, np.float32),
        "proj_w": _numpy(mlp.c_proj.weight).T * ls_2[None, :],
        "proj_b": (_numpy(mlp.c_proj.bias) if mlp.c_proj.bias is not None else zeros) * ls_2,
    }


WEIGHT_FORMATS = ("u8", "s7")


def _quantize_columns(weight: np.ndarray, weights: str = "s7") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit weights with one scale per output column (the last axis of ``x @ W``).

    ``"u8"``: uint8 around a zero point of 128 (values 1..255, symmetric). With uint8
    activations this selects ONNX Runtime's u8u8 kernel. The u8s8 kernel is faster on AVX2
    CPUs without VNNI, but adds pairs of products in saturating 16-bit lanes (``vpmaddubsw``):
    activations sit around their zero point (~128), so with full-range int8 weights those sums
    clip (ViT-B-32 text: cosine to fp32 0.9973 with int8 vs 0.9995 with uint8).
    ``"s7"`` (default): int8 limited to ±63, which cannot saturate, for the faster u8s8 kernel:
    one bit less (ViT-B-32 text: cosine 0.9982–0.9989, image 0.9999), ~10% faster than u8.
    """
    levels = 127.0 if weights == "u8" else 63.0
    scale = np.abs(weight).max(axis=0) / levels
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(weight / scale[None, :]), -levels, levels)
    if weights == "u8":
        return (quantized + 128).astype(np.uint8), scale, np.full(scale.shape, 128, np.uint8)
    return quantized.astype(np.int8), scale, np.zeros(scale.shape, np.int8)


class _GraphBuilder:
    def __init__(self, weights: str = "s7") -> None:
        from onnx import helper, numpy_helper

        self.weights = weights
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, *,
             domain: str = "", **attrs: Any) -> list[str]:
        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op, inputs, names, name=f"{op}_{self._count}",
                                                domain=domain, **attrs))
        return names

    def matmul(self, x: str, weight: np.ndarray, name: str, quantize: bool,
               bias: np.ndarray | None = None) -> str:
        """``x @ weight (+ bias)``; with quantize the bias is fused into the int8 kernel."""
        if quantize:
            q, scale, zero = _quantize_columns(weight, self.weights)
            inputs = [x, self.const(f"{name}_q", q), self.const(f"{name}_scale", scale),
                      self.const(f"{name}_zp", zero)]
            if bias is not None:
                inputs.append(self.const(f"{name}_b", bias.astype(np.float32)))
            return self.node("DynamicQuantizeMatMul", inputs, domain=MS_DOMAIN)[0]
        out = self.node("MatMul", [x, self.const(f"{name}_w", weight.astype(np.float32))])[0]
        if bias is not None:
            out = self.node("Add", [out, self.const(f"{name}_b", bias.astype(np.float32))])[0]
        return out


def _add_blocks(g: _GraphBuilder, weights: list[dict[str, Any]], *, quantize: bool, causal: bool) -> str:
    """The residual blocks from input ``x``; returns the name of the final residual stream."""
    fmt = g.weights
    residual = "x"
    normed = g.node("LayerNormalization", ["x", g.const("b0_ln1_g", weights[0]["ln_1"][0]),
                                           g.const("b0_ln1_b", weights[0]["ln_1"][1])],
                    axis=-1, epsilon=weights[0]["ln_1"][2])[0]
    for index, w in enumerate(weights):
        p = f"b{index}_"
        if quantize:
            q_in, q_scale, q_zp = g.node("DynamicQuantizeLinear", [normed], 3)
            qw, qscale, qzero = _quantize_columns(w["qkv_w"], fmt)
            attn = g.node("QAttention", [
                q_in, g.const(p + "qkv_q", qw), g.const(p + "qkv_b", w["qkv_b"]), q_scale,
                g.const(p + "qkv_scale", qscale), "", q_zp, g.const(p + "qkv_zp", qzero),
            ], domain=MS_DOMAIN, num_heads=w["heads"], unidirectional=int(causal))[0]
        else:
            attn = g.node("Attention", [normed, g.const(p + "qkv_w", w["qkv_w"]),
                                        g.const(p + "qkv_b", w["qkv_b"])],
                          domain=MS_DOMAIN, num_heads=w["heads"], unidirectional=int(causal))[0]
        out = g.matmul(attn, w["out_w"], p + "out", quantize)
        # residual + attention + out bias, then ln_2: one fused kernel; output 3 is the sum.
        normed, _, _, residual = g.node(
            "SkipLayerNormalization",
            [out, residual, g.const(p + "ln2_g", w["ln_2"][0]), g.const(p + "ln2_b", w["ln_2"][1]),
             g.const(p + "out_b", w["out_b"])],
            [f"{p}ln2", "", "", f"{p}res1"], domain=MS_DOMAIN, epsilon=w["ln_2"][2])
        if quantize:
            hidden = g.matmul(normed, w["fc_w"], p + "fc", True, w["fc_b"])
        else:
            hidden = g.matmul(normed, w["fc_w"], p + "fc", False)
        if w["activation"] == "gelu" and quantize:
            hidden = g.node("Gelu", [hidden], domain=MS_DOMAIN)[0]
        elif w["activation"] == "gelu":  # exact (erf) GELU with the bias fused
            hidden = g.node("BiasGelu", [hidden, g.const(p + "fc_b", w["fc_b"])], domain=MS_DOMAIN)[0]
        else:
            if not quantize:
                hidden = g.node("Add", [hidden, g.const(p + "fc_b", w["fc_b"])])[0]
            hidden = g.node("QuickGelu", [hidden], domain=MS_DOMAIN, alpha=1.702)[0]
        mlp = g.matmul(hidden, w["proj_w"], p + "proj", quantize)
        if index + 1 < len(weights):
            nxt = weights[index + 1]["ln_1"]
            q = f"b{index + 1}_"
            normed, _, _, residual = g.node(
                "SkipLayerNormalization",
                [mlp, residual, g.const(q + "ln1_g", nxt[0]), g.const(q + "ln1_b", nxt[1]),
                 g.const(p + "proj_b", w["proj_b"])],
                [f"{q}ln1", "", "", f"{p}res2"], domain=MS_DOMAIN, epsilon=nxt[2])
        else:
            mlp = g.node("Add", [mlp, g.const(p + "proj_b", w["proj_b"])])[0]
            residual = g.node("Add", [residual, mlp])[0]
    return residual


def _model_bytes(g: _GraphBuilder, inputs: list[Any], outputs: list[Any]) -> bytes:
    from onnx import helper

    graph = helper.make_graph(g.nodes, "clip_search", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 8
    return model.SerializeToString()


def _blocks_weights(transformer: torch.nn.Module | None) -> list[dict[str, Any]]:
    blocks = list(getattr(transformer, "resblocks", []))
    if not blocks:
        raise UnsupportedTextTower("not an open_clip Transformer (no resblocks)")
    return [_block_weights(block) for block in blocks]


def build_transformer_graph(transformer: torch.nn.Module, *, quantize: bool, causal: bool,
                            weights: str = "s7") -> bytes:
    """Serialized ONNX model of an open_clip ``Transformer``'s blocks (text or image tower):
    ``x`` (N, L, width) → ``hidden`` (N, L, width), batch first."""
    from onnx import TensorProto, helper

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}")
    blocks = _blocks_weights(transformer)
    g = _GraphBuilder(weights)
    residual = _add_blocks(g, blocks, quantize=quantize, causal=causal)
    g.node("Identity", [residual], ["hidden"])
    dims = ["batch", "length", int(blocks[0]["qkv_w"].shape[0])]
    return _model_bytes(g, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, dims)])


def _text_head(model: torch.nn.Module) -> tuple[tuple[np.ndarray, np.ndarray, float], np.ndarray,
                                                  np.ndarray | None]:
    """``ln_final`` and ``text_projection`` as arrays (``x @ W + b``)."""
    ln = getattr(model, "ln_final", None)
    if not isinstance(ln, torch.nn.LayerNorm) or ln.weight is None or ln.bias is None:
        raise UnsupportedTextTower("ln_final must be an affine LayerNorm")
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        weight = _numpy(projection.weight).T.copy()
        bias = _numpy(projection.bias) if projection.bias is not None else None
    elif isinstance(projection, torch.Tensor) and projection.ndim == 2:
        weight, bias = _numpy(projection), None
    else:
        raise UnsupportedTextTower("text_projection must be a matrix or a Linear")
    return (_numpy(ln.weight), _numpy(ln.bias), float(ln.eps)), weight, bias


def build_text_graph(model: torch.nn.Module, *, quantize: bool, causal: bool = True,
                     weights: str = "s7") -> bytes:
    """The text tower after the embeddings: ``x`` (N, L, width) token + position embeddings and
    ``pool_at`` (N, 1) the pooled positions (CLIP's EOT, SigLIP's last) → ``features``
    (N, embed_dim), not normalised. ``ln_final`` (per token, so applied after pooling) and the
    projection stay fp32. ``causal``: CLIP's mask; SigLIP's tower attends both ways."""
    from onnx import TensorProto, helper

    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}")
    blocks = _blocks_weights(getattr(model, "transformer", None))
    (gamma, beta, eps), projection, bias = _text_head(model)
    g = _GraphBuilder(weights)
    residual = _add_blocks(g, blocks, quantize=quantize, causal=causal)
    pooled = g.node("GatherND", [residual, "pool_at"], batch_dims=1)[0]  # (N, width)
    normed = g.node("LayerNormalization", [pooled, g.const("ln_final_g", gamma),
                                           g.const("ln_final_b", beta)], axis=-1, epsilon=eps)[0]
    out = g.node("MatMul", [normed, g.const("text_projection", projection)],
                 ["features" if bias is None else "projected"])[0]
    if bias is not None:
        g.node("Add", [out, g.const("text_projection_b", bias)], ["features"])
    width = int(blocks[0]["qkv_w"].shape[0])
    return _model_bytes(
        g,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", width]),
         helper.make_tensor_value_info("pool_at", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", projection.shape[1]])],
    )


class OnnxTransformer(torch.nn.Module):
    """Drop-in for an open_clip ``Transformer`` (``forward(x, attn_mask=None)``, ``x`` (N, L, D)
    whatever the blocks' internal layout, as in open_clip ≥ 2.24) that runs its blocks in one
    ONNX Runtime session. ``causal``: the text tower's mask (the only mask supported; any
    ``attn_mask`` passed is taken to be it).

    ``threads``: intra-op threads of this session only (torch's setting is left alone).
    """

    def __init__(self, transformer: torch.nn.Module, *, causal: bool, quantize: bool = True,
                 threads: int = 1, weights: str = "s7") -> None:
        super().__init__()
        graph = build_transformer_graph(transformer, quantize=quantize, causal=causal, weights=weights)
        self.causal, self.quantized, self.threads = causal, bool(quantize), threads
        self._session = _session(graph, threads)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Batch-first float32 numpy in and out (thread-safe: ORT sessions are)."""
        return self._session.run(["hidden"], {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.from_numpy(self.run(x.detach().float().cpu().numpy())).to(x.dtype)


class OnnxTextTower:
    """The whole text tower in one ONNX Runtime session (the truncated causal forward of CLIP,
    or SigLIP's bidirectional one at full length): token ids → unnormalised features. The
    embedding look-up is a numpy index into the model's own embedding table (shared memory, no
    copy); everything after it is the graph, so a query costs one ``session.run`` and no torch
    operator.

    ``model``: what holds the tower's parts (the CLIP model, or a ``CustomTextCLIP``'s ``text``).
    ``threads``: intra-op threads of this session only (torch's setting is left alone).
    ``keep_graph``: keep the serialized graph in ``graph`` for the graph cache.
    """

    def __init__(self, model: torch.nn.Module, *, quantize: bool = True, causal: bool = True,
                 threads: int = 1, weights: str = "s7", keep_graph: bool = False) -> None:
        embedding = getattr(model, "token_embedding", None)
        positions = getattr(model, "positional_embedding", None)
        if not isinstance(embedding, torch.nn.Embedding) or positions is None:
            raise UnsupportedTextTower("the text tower has no token / positional embedding")
        self.quantized, self.threads, self.weights = bool(quantize), threads, weights
        graph = build_text_graph(model, quantize=quantize, causal=causal, weights=weights)
        self._session = _session(graph, threads)
        # The serialized graph, kept only to be written to the graph cache (``graph_cache.store``).
        self.graph: bytes | None = graph if keep_graph else None
        self._embedding = _numpy(embedding.weight)
        self._positions = _numpy(positions)

    def encode(self, tokens: np.ndarray, pool_at: np.ndarray) -> np.ndarray:
        """``tokens`` (N, L), a causal tower's already cut after the last EOT; ``pool_at`` (N,)
        the pooled positions."""
        x = self._embedding[tokens]
        x += self._positions[: tokens.shape[1]]
        pool = np.ascontiguousarray(pool_at, dtype=np.int64).reshape(-1, 1)
        return self._session.run(["features"], {"x": x, "pool_at": pool})[0]
