"""Which text tower a model has, and which of ``TextEncoder``'s shortcuts give its exact vectors.

``encode_text`` differs by family, and a shortcut that is exact for one is wrong for another:

- **CLIP** (open_clip ``CLIP``): a causal transformer pooled at the end-of-text token (``argmax``
  / ``eos``). Tokens after the batch's last end-of-text token never reach it: the transformer
  runs on ``tokens[:, :last EOT + 1]``.
- **SigLIP** (``CustomTextCLIP`` with open_clip's ``TextTransformer``): no causal mask, no padding
  mask, pooled at the *last* position: every one of the ``context_length`` positions, padding
  included (SigLIP pads with its end token), reaches the pooled token. Nothing can be cut; the
  rebuilt transformers (``FusedTransformer``, int8, ONNX) run it bidirectionally at full length.
- **Hugging Face towers** (``HFTextEncoder``: XLM-RoBERTa, BERT, mT5...): a transformers model
  with an attention mask over the padding and its own pooler. Only its own ``encode_text`` is
  run; with a pooler that reads nothing past the padding mask (mean, CLS), padding columns after
  the batch's longest text are dropped first (positions and mask of the text are unchanged).
- Anything else (a class token, a padding mask, an unknown pooling, no token embedding):
  ``encode_text`` as it is.

Each family's shortcut is held to ``encode_text`` in ``tests/test_siglip.py`` and
``tests/test_multilingual.py`` (CLIP's in ``tests/test_encoder_equivalence.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Poolers of open_clip's HFTextEncoder that read only unmasked tokens (MaxPooler does not: it
# fills the *unmasked* positions, so dropping padding would change its result).
PAD_FREE_POOLERS = ("MeanPooler", "ClsPooler", "ClsLastHiddenStatePooler")

CAUSAL, BIDIRECTIONAL, HF, EXACT = "causal", "bidirectional", "hf", "exact"


@dataclass(frozen=True)
class TextTower:
    """``family``: CAUSAL (CLIP), BIDIRECTIONAL (SigLIP), HF or EXACT. ``module``: what holds the
    tower's parts (``token_embedding``, ``transformer``, ``ln_final``, ``text_projection``): the
    model itself for ``CLIP``, ``model.text`` for ``CustomTextCLIP``. ``reason``: why only
    ``encode_text`` runs."""

    family: str
    module: torch.nn.Module | None
    causal: bool = False
    pool_type: str = ""
    eos_id: int | None = None
    pad_id: int | None = None
    reason: str = ""

    @property
    def rebuilt(self) -> bool:
        """Its transformer may be run by our own code (truncated, fused, int8, ONNX)."""
        return self.family in (CAUSAL, BIDIRECTIONAL)

    def pool_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """The position pooled in each row, as open_clip's ``text_global_pool`` picks it."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        position = 0 if self.pool_type == "first" else tokens.shape[1] - 1
        return torch.full((tokens.shape[0],), position, dtype=torch.long)

    def length(self, tokens: torch.Tensor, pool_at: torch.Tensor) -> int:
        """Columns to run: up to the last pooled position for a causal tower, all otherwise."""
        return int(pool_at.max()) + 1 if self.causal else tokens.shape[1]

    def unpadded(self, tokens: torch.Tensor) -> torch.Tensor:
        """A Hugging Face tower's tokens without the padding columns after the longest text."""
        used = (tokens != self.pad_id).any(dim=0).nonzero()
        return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]


def describe(model: torch.nn.Module) -> TextTower:
    """The text tower of an open_clip model (CLIP, CustomTextCLIP) and what may be done with it."""
    text = getattr(model, "text", None)
    if text is None and not hasattr(model, "text"):
        return _open_clip_tower(model, getattr(model, "text_pool_type", "argmax"),
                                getattr(model, "text_eos_id", None), cls_emb=None, pad_mask=False)
    if type(text).__name__ == "HFTextEncoder":
        pooler = type(text.pooler).__name__
        if pooler not in PAD_FREE_POOLERS:
            return TextTower(EXACT, text, reason=f"its {pooler} reads padding positions")
        return TextTower(HF, text, pad_id=int(text.config.pad_token_id),
                         reason="a Hugging Face text tower runs only its own forward")
    if text is None:
        return TextTower(EXACT, None, reason="the text tower was not loaded")
    return _open_clip_tower(text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", None),
                            cls_emb=getattr(text, "cls_emb", None),
                            pad_mask=getattr(text, "use_pad_mask", False))


def _open_clip_tower(module: torch.nn.Module, pool_type: str, eos_id: int | None, *,
                     cls_emb: torch.Tensor | None, pad_mask: bool) -> TextTower:
    causal = getattr(module, "attn_mask", None) is not None
    missing = [name for name in ("token_embedding", "positional_embedding", "transformer", "ln_final")
               if getattr(module, name, None) is None]
    if missing:
        reason = f"no {missing[0]}"
    elif cls_emb is not None or pad_mask:
        reason = "a class token or padding mask changes the attention"
    elif pool_type not in ("argmax", "eos", "first", "last"):
        reason = f"pooling {pool_type!r}"
    else:
        return TextTower(CAUSAL if causal else BIDIRECTIONAL, module, causal=causal, pool_type=pool_type,
                         eos_id=eos_id)
    return TextTower(EXACT, module, reason=reason)
