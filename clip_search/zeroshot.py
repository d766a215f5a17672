"""Zero-shot class probabilities from cosine similarities, the way the model was trained to score.

- CLIP (contrastive softmax loss): ``softmax(logit_scale · cos)`` across the classes given: each
  row sums to 1, so a class is likely only *relative to the others* (moderation's safe prompts
  are classes of their own for that reason).
- SigLIP (sigmoid loss, a learned ``logit_bias``): ``sigmoid(logit_scale · cos + logit_bias)``
  for each class on its own: the model's probability that the image matches that text, whatever
  the other classes are. Trained SigLIP models put the bias near -10 to -17 and the scale near
  100 to 120, so a clear match scores well below 1 and a non-match near 0.
"""

from __future__ import annotations

import numpy as np


def probabilities(cosines: np.ndarray, logit_scale: float, logit_bias: float | None) -> np.ndarray:
    """(N, C) cosines of L2-normalised vectors → (N, C) probabilities: softmax over each row
    without a bias (CLIP), an independent sigmoid per entry with one (SigLIP). float64: a
    confident model puts a class at exp(-100), which float32 flushes to 0."""
    logits = logit_scale * np.asarray(cosines, dtype=np.float64)
    if logit_bias is not None:
        return 1.0 / (1.0 + np.exp(-(logits + logit_bias)))
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def ensemble(vectors: np.ndarray) -> np.ndarray:
    """One class vector from the (L2-normalised) embeddings of its prompts: their mean,
    normalised again. Averaging phrasings ("a photo of a mug", "a mug") cancels what each
    wording adds of its own and keeps what they share, the class."""
    mean = vectors.mean(axis=0)
    return mean / np.linalg.norm(mean)
