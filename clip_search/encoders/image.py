"""Product images → L2-normalised CLIP vectors, in batches, with the model's own preprocessing.

Bytes are decoded by ``clip_search.imaging.decode_image`` (limits, EXIF orientation, → RGB),
then transformed by exactly the ``preprocess`` open_clip built for the model (resize, centre
crop, mean/std). Optional fast paths, each tested against stock open_clip
(``tests/test_encoder_equivalence.py``) and measured in ``bench/image_encoder.py``:
- ``draft``: JPEGs are decoded at a reduced DCT scale no smaller than twice the model's input,
  so a 3000 px photo is never fully decoded just to be shrunk to 224 px;
- ``quantize``: int8 weights for the image transformer. With ``backend="torch"``: per-channel
  dynamic quantisation of every Linear (the attention's projections included, see
  ``text.FusedTransformer``); with ``backend="onnx"``: the blocks run as one ONNX Runtime
  graph (``onnx_text.OnnxTransformer``), fp32 or 8-bit. Patch embedding, pooling and
  projection always run in torch with the model's own modules.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_search.encoders.loader import LoadedClip
from clip_search.imaging import ImageRejected, decode_image

logger = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """One input's outcome: a vector, or the reason it was rejected."""

    vector: np.ndarray | None = None
    error: ImageRejected | None = None


BACKENDS = ("torch", "onnx")


class ImageEncoder:
    """``threads``: intra-op threads of the ONNX session (default: torch's thread count);
    the torch backend uses torch's process-wide setting (``EncoderSpec.threads``)."""

    def __init__(self, clip: LoadedClip, *, quantize: bool = False, draft: bool = True,
                 batch_size: int = 32, backend: str = "torch", threads: int | None = None) -> None:
        if clip.model.visual is None:
            raise ValueError("This CLIP was loaded with the text tower only.")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown image encoder backend {backend!r}: use one of {BACKENDS}.")
        self.clip = clip
        self.batch_size = batch_size
        self.draft = draft
        self.quantized = bool(quantize)
        self.backend = backend
        self.input_size = _input_size(clip.model)
        visual = clip.model.visual
        self._dtype = next(visual.parameters()).dtype
        if backend == "onnx":
            from clip_search.encoders.onnx_text import OnnxTransformer, UnsupportedTextTower

            try:
                self._visual = _with_transformer(visual, OnnxTransformer(
                    visual.transformer, causal=False, quantize=quantize,
                    threads=threads or torch.get_num_threads()))
            except (UnsupportedTextTower, AttributeError) as error:
                logger.warning("ONNX image backend cannot rebuild this image tower (%s); using torch.",
                               error)
                self.backend = "torch"
        if self.backend == "torch":
            self._visual = _quantize(visual) if quantize else visual

    def decode(self, data: bytes) -> Image.Image:
        """Safe decode; with ``draft`` a large JPEG is decoded at a reduced scale."""
        if self.draft and data[:3] == b"\xff\xd8\xff":
            return decode_image(data, draft_size=2 * self.input_size)
        return decode_image(data)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.clip.preprocess(image) for image in images])

    @torch.inference_mode()
    def encode_tensor(self, pixels: torch.Tensor) -> np.ndarray:
        dtype = torch.float32 if self.quantized and self.backend == "torch" else self._dtype
        features = self._visual(pixels.to(dtype))
        return F.normalize(features.float(), dim=-1).numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Vectors for decoded RGB images, ``batch_size`` at a time."""
        chunks = [
            self.encode_tensor(self.preprocess(images[start:start + self.batch_size]))
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.clip.dimension), np.float32)

    def encode_bytes(self, blobs: Iterable[bytes]) -> list[ImageResult]:
        """Decode and embed; a bad image gets its reason and never spoils the batch."""
        results: list[ImageResult] = []
        good: list[tuple[int, Image.Image]] = []
        for blob in blobs:
            try:
                good.append((len(results), self.decode(blob)))
                results.append(ImageResult())
            except ImageRejected as error:
                results.append(ImageResult(error=error))
        vectors = self.encode_images([image for _, image in good])
        for (index, _), vector in zip(good, vectors, strict=True):
            results[index].vector = vector
        return results


def _input_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _with_transformer(visual: torch.nn.Module, transformer: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of the image tower whose ``transformer`` is replaced; the loaded model
    (shared with the text encoder and moderation) is left as it is."""
    clone = copy.copy(visual)
    clone._modules = dict(visual._modules)
    clone._modules["transformer"] = transformer
    return clone


def _quantize(visual: torch.nn.Module) -> torch.nn.Module:
    from clip_search.encoders.text import FusedTransformer, quantized_transformer

    transformer = getattr(visual, "transformer", None)
    if transformer is not None and FusedTransformer.supports(transformer):
        return _with_transformer(visual, quantized_transformer(transformer, causal=False))
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices
        return quantize_dynamic(copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8)
