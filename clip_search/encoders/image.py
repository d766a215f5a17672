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
import io
import itertools
import logging
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clip_search.encoders.loader import LoadedClip
from clip_search.imaging import DECODE_ERRORS, ImageRejected, decode_image

logger = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """One input's outcome: a vector, or the reason it was rejected."""

    vector: np.ndarray | None = None
    error: ImageRejected | None = None


BACKENDS = ("torch", "onnx")


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class ImageEncoder:
    """``threads``: intra-op threads of the ONNX session (default: torch's thread count);
    the torch backend uses torch's process-wide setting (``EncoderSpec.threads``).
    ``decode_threads``: images decoded and resized in parallel with inference (Pillow
    releases the GIL), so the model is not left waiting on JPEG decoding.

    ``device`` and ``precision`` (a GPU worker): the image tower runs on ``device`` (None:
    where it was loaded; else a copy, the text tower and the loaded model stay where they
    were), its matrix products in fp16 or bf16 under autocast. The weights stay the fp32 ones
    loaded, so the encoder's fingerprint, the identity web and worker processes agree on,
    does not change, and the vectors stay within cosine 0.999 of the CPU's. A device torch
    cannot use falls back to the CPU with a warning (``manage.py check``: clip_search.W005)."""

    def __init__(self, clip: LoadedClip, *, quantize: bool = False, draft: bool = True,
                 batch_size: int = 32, backend: str = "torch", threads: int | None = None,
                 decode_threads: int | None = None, device: str | None = None,
                 precision: str = "fp32") -> None:
        if clip.model.visual is None:
            raise ValueError("This CLIP was loaded with the text tower only.")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown image encoder backend {backend!r}: use one of {BACKENDS}.")
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}: use one of {tuple(PRECISIONS)}.")
        self.clip = clip
        self.batch_size = batch_size
        self.draft = draft
        self.quantized = bool(quantize)
        self.backend = backend
        self.input_size = _input_size(clip.model)
        self.decode_threads = decode_threads or min(2, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None  # ``start``'s decode threads, made on first use
        self._pool_pid = 0
        visual = clip.model.visual
        self._dtype = next(visual.parameters()).dtype
        self._tensor_steps = _split_preprocess(clip.preprocess)
        self._resize = _first_resize(clip.preprocess)
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
        self.device, self.precision = next(visual.parameters()).device, precision
        if device is not None and self.backend == "torch" and not quantize:
            target = usable_device(device)
            if target != self.device:
                self._visual, self.device = copy.deepcopy(visual).to(target), target

    def decode(self, data: bytes) -> Image.Image:
        """Safe decode; with ``draft`` a large JPEG is decoded at a reduced scale."""
        if self.draft and data[:3] == b"\xff\xd8\xff":
            return self._undo_draft_rounding(data, decode_image(data, draft_size=2 * self.input_size))
        return decode_image(data)

    def _undo_draft_rounding(self, data: bytes, image: Image.Image) -> Image.Image:
        """Give a reduced-scale JPEG decode the geometry of the full decode.

        JPEG scaling by 1/s yields ``ceil(w / s)`` pixels whose last column is part padding, so
        the drafted image's aspect ratio is slightly off; the preprocessing's ``Resize`` then
        rounds its long side differently (e.g. 1389×1651 → 64×76 in full, 64×75 drafted) and
        the whole picture shifts and stretches by a pixel: cosine 0.987 instead of 0.9999 on a
        64 px model. So the exact original area of the drafted image (``box``, fractional,
        after EXIF orientation) is resized here, with the model's interpolation, to the size
        the first ``Resize`` would give the full image; that ``Resize`` is then a no-op.
        """
        if self._resize is None:
            return image
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
                orientation = int(header.getexif().get(_ORIENTATION, 1) or 1)
        except DECODE_ERRORS:
            return image
        swapped = orientation in (5, 6, 7, 8)
        drafted = image.size[::-1] if swapped else image.size  # as stored, before orientation
        if drafted == (width, height):
            return image  # not drafted
        scale = next((s for s in (2, 4, 8) if (-(-width // s), -(-height // s)) == drafted), None)
        if scale is None:
            return image
        box = _orient_box((0.0, 0.0, width / scale, height / scale), drafted, orientation)
        full_size = (height, width) if swapped else (width, height)
        size, resample = self._resize
        return image.resize(_resized_size(full_size, size), resample=resample, box=box)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's preprocessing, as a (N, 3, H, W) batch. Bit-identical to stacking
        ``clip.preprocess(image)``; see ``_prepare`` / ``_collate`` for why it is split."""
        return self._collate([self._prepare(image) for image in images])

    def _prepare(self, image: Image.Image) -> np.ndarray | torch.Tensor:
        """Per-image part of the preprocessing. When it is open_clip's usual ``[PIL steps…,
        ToTensor, Normalize]``, only the PIL steps (resize, crop, mode) run here and a small
        uint8 array comes out; the tensor steps run once per batch in ``_collate``: the same
        torch operations, but on one 32-image tensor instead of 32 small ones (a small tensor
        op costs ~20 ms instead of ~0.5 ms on a busy 2-core machine with 2 intra-op threads:
        each waits for the descheduled OpenMP thread). Anything else: the full preprocess."""
        image = _trim_sliver(image)
        if self._tensor_steps is None:
            return self.clip.preprocess(image)
        prepared = image
        for step in self._tensor_steps[0]:
            prepared = step(prepared)
        if isinstance(prepared, Image.Image) and prepared.mode == "RGB":
            return np.array(prepared)  # writable: torch.from_numpy warns on read-only arrays
        return self.clip.preprocess(image)

    def _collate(self, prepared: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        if not prepared:
            return torch.zeros((0, 3, self.input_size, self.input_size))
        if all(isinstance(item, np.ndarray) for item in prepared) and len(
                {item.shape for item in prepared}) == 1:
            return self._normalize(torch.from_numpy(np.stack(prepared)).permute(0, 3, 1, 2))
        return torch.stack([
            self._normalize(torch.from_numpy(item).permute(2, 0, 1)[None])[0]
            if isinstance(item, np.ndarray) else item for item in prepared])

    def _normalize(self, uint8_nchw: torch.Tensor) -> torch.Tensor:
        """torchvision's ``to_tensor`` + ``Normalize`` arithmetic, on a whole batch."""
        _, mean, std = self._tensor_steps
        batch = uint8_nchw.contiguous().to(dtype=torch.get_default_dtype()).div(255)
        return batch.sub_(mean).div_(std)

    @torch.inference_mode()
    def encode_tensor(self, pixels: torch.Tensor) -> np.ndarray:
        dtype = torch.float32 if self.quantized and self.backend == "torch" else self._dtype
        low = PRECISIONS[self.precision] if self.backend == "torch" and not self.quantized else None
        with torch.autocast(self.device.type, dtype=low, enabled=low is not None):
            features = self._visual(pixels.to(device=self.device, dtype=dtype))
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Vectors for decoded RGB images, ``batch_size`` at a time."""
        chunks = [
            self.encode_tensor(self.preprocess(images[start:start + self.batch_size]))
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.clip.dimension), np.float32)

    def encode_bytes(self, blobs: Iterable[bytes]) -> list[ImageResult]:
        """Decode and embed; a bad image gets its reason and never spoils the batch.

        Each image is decoded and cut down to the model's input right away, so at most
        ``decode_threads`` full-size decoded images are in memory at a time (not
        ``batch_size`` of them: 32 photos at the 50 MP limit would be 4.8 GB). Decoding runs
        in threads at most one batch ahead, overlapping inference of the previous batch."""
        with ThreadPoolExecutor(self.decode_threads, thread_name_prefix="clip-decode") as pool:
            blobs = iter(blobs)
            ahead: deque[Future] = deque(pool.submit(self._load, blob)
                                         for blob in itertools.islice(blobs, self.batch_size))

            def in_order() -> Iterator[Future]:
                while ahead:
                    future = ahead.popleft()
                    ahead.extend(pool.submit(self._load, blob) for blob in itertools.islice(blobs, 1))
                    yield future

            return self.finish(in_order())

    def start(self, blobs: Iterable[bytes]) -> list[Future]:
        """Start decoding ``blobs`` in the encoder's decode threads and return at once; the
        futures go to ``finish``. What lets a reindex decode the next batch while the model
        embeds this one (``clip_search.streaming``). The bytes are already in memory; what
        decoding adds stays bounded as in ``encode_bytes``: one full-size image per thread,
        then the model's small input."""
        if self._pool is None or self._pool_pid != os.getpid():  # threads do not survive a fork
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="clip-decode")
            self._pool_pid = os.getpid()
        return [self._pool.submit(self._load, blob) for blob in blobs]

    def finish(self, loading: Iterable[Future]) -> list[ImageResult]:
        """The results of decodes started by ``start`` (or ``encode_bytes``), in order,
        ``batch_size`` images to a model call; a rejected image gets its reason."""
        results: list[ImageResult] = []
        pending: list[tuple[ImageResult, np.ndarray | torch.Tensor]] = []

        def flush() -> None:
            vectors = self.encode_tensor(self._collate([item for _, item in pending]))
            for (result, _), vector in zip(pending, vectors, strict=True):
                result.vector = vector
            pending.clear()

        for future in loading:
            result = ImageResult()
            results.append(result)
            try:
                pending.append((result, future.result()))
            except ImageRejected as error:
                result.error = error
                continue
            if len(pending) >= self.batch_size:
                flush()
        if pending:
            flush()
        return results

    def _load(self, blob: bytes) -> np.ndarray | torch.Tensor:
        """Bytes → the model's per-image input (runs in a decode thread)."""
        return self._prepare(self.decode(blob))


def usable_device(name: str) -> torch.device:
    """``name`` as a torch device, or the CPU (with a warning) when torch cannot use it here."""
    device = torch.device(name)
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: torch.backends.mps.is_available()}.get(device.type, lambda: False)
    if device.type == "cuda" and available() and (device.index or 0) >= torch.cuda.device_count():
        available = lambda: False  # noqa: E731
    if not available():
        logger.warning("clip_search: image encoder device %r is not available to torch here; "
                       "embedding on the CPU.", name)
        return torch.device("cpu")
    return device


_ORIENTATION = 0x0112
# Resize-shortest-side-then-center-crop keeps only the middle square of an image; a
# 30000×10 sliver would first be blown up to 672000×224 (450 MB). Past this aspect ratio
# the image is cut to its middle first, with a full square of margin on each side.
_MAX_ASPECT = 8


def _trim_sliver(image: Image.Image) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= _MAX_ASPECT * short:
        return image  # every ordinary photo: untouched, so the result equals stock exactly
    keep = 3 * short
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


def _first_resize(preprocess) -> tuple[list[int], int] | None:
    """``(size, PIL resample)`` of the preprocessing's first step if it is a torchvision
    ``Resize`` without ``max_size`` (open_clip's "shortest" and "squash" modes), else None."""
    steps = list(getattr(preprocess, "transforms", None) or [])
    if not steps or type(steps[0]).__name__ != "Resize" or getattr(steps[0], "max_size", None):
        return None
    size = steps[0].size
    size = [size] if isinstance(size, int) else list(size)
    interpolation = getattr(steps[0].interpolation, "value", steps[0].interpolation)
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
                "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}
    if len(size) not in (1, 2) or interpolation not in resample:
        return None
    return size, resample[interpolation]


def _resized_size(image_size: tuple[int, int], size: list[int]) -> tuple[int, int]:
    """(w, h) that torchvision's ``Resize(size)`` gives an image of ``image_size`` (w, h)."""
    if len(size) == 2:
        return size[1], size[0]
    width, height = image_size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size[0], int(size[0] * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _orient_box(box: tuple[float, float, float, float], size: tuple[int, int],
                orientation: int) -> tuple[float, float, float, float]:
    """``box`` in a stored image of ``size`` → the same area after ``exif_transpose``."""
    x0, y0, x1, y1 = box
    width, height = size
    return {
        2: (width - x1, y0, width - x0, y1),  # mirrored
        3: (width - x1, height - y1, width - x0, height - y0),  # rotated 180
        4: (x0, height - y1, x1, height - y0),  # flipped
        5: (y0, x0, y1, x1),  # transposed
        6: (height - y1, x0, height - y0, x1),  # rotated 90 clockwise
        7: (height - y1, width - x1, height - y0, width - x0),  # transversed
        8: (y0, width - x1, y1, width - x0),  # rotated 90 counter-clockwise
    }.get(orientation, box)


def _split_preprocess(preprocess) -> tuple[list, torch.Tensor, torch.Tensor] | None:
    """``(PIL steps, mean, std)`` if ``preprocess`` is a Compose ending in ToTensor + Normalize
    (what open_clip builds), else None (then it is applied as is, image by image)."""
    steps = list(getattr(preprocess, "transforms", None) or [])
    if len(steps) < 2:
        return None
    *pil_steps, to_tensor, normalize = steps
    if (type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor")
            or type(normalize).__name__ != "Normalize"):
        return None
    dtype = torch.get_default_dtype()
    mean = torch.as_tensor(normalize.mean, dtype=dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=dtype).view(1, -1, 1, 1)
    if mean.shape[1] != 3 or std.shape[1] != 3:
        return None
    return pil_steps, mean, std


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
