"""CLIP encoders: one loader, a fast query-text encoder, a batched image encoder.

Process-wide instances come from ``get_text_encoder()`` / ``get_image_encoder()``: a web
process that answers text queries asks only for the text encoder and so never keeps the image
tower in memory. With the ONNX text backend and a cached graph (``graph_cache``) it does not
import torch either: this package and ``get_text_encoder`` import the torch modules (loader,
text, image) only when one is needed.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from clip_search.encoders.spec import EncoderLoadError, EncoderSpec, Towers

if TYPE_CHECKING:
    from clip_search.encoders.graph_text import GraphTextEncoder
    from clip_search.encoders.image import ImageEncoder, ImageResult
    from clip_search.encoders.loader import LoadedClip
    from clip_search.encoders.text import TextEncoder

__all__ = [
    "EncoderLoadError", "EncoderSpec", "ImageEncoder", "ImageResult", "LoadedClip", "TextEncoder",
    "get_clip", "get_image_encoder", "get_text_encoder", "image_encoder_for", "load_clip", "reset",
    "text_encoder_for",
]

# Names served from a torch module, imported on first use (``from clip_search.encoders import X``).
_LAZY = {"ImageEncoder": "image", "ImageResult": "image", "LoadedClip": "loader", "TextEncoder": "text"}

_lock = threading.Lock()
_text: dict[EncoderSpec, TextEncoder | GraphTextEncoder] = {}
_image: dict[tuple[EncoderSpec, Towers], ImageEncoder] = {}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"clip_search.encoders.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_clip(spec: EncoderSpec | None = None, towers: Towers = "both") -> LoadedClip:
    """The process-wide loaded model (``loader.get_clip``)."""
    from clip_search.encoders import loader

    return loader.get_clip(spec, towers)


def load_clip(spec: EncoderSpec, towers: Towers = "both") -> LoadedClip:
    from clip_search.encoders import loader

    return loader.load_clip(spec, towers)


def get_text_encoder(spec: EncoderSpec | None = None, fingerprint: str | None = None,
                     ) -> TextEncoder | GraphTextEncoder:
    """The process's query encoder for ``spec`` (the settings' model by default).

    With the ONNX backend, a valid cached graph of these weights (``fingerprint``, or the one
    last built for ``spec``) is run without torch; otherwise the model is loaded and, for the
    ONNX backend, its graph is written to the cache for the next process."""
    spec = spec or EncoderSpec.from_settings()
    with _lock:
        if spec not in _text:
            _text[spec] = _cached_text_encoder(spec, fingerprint) or _built_text_encoder(spec)
        return _text[spec]


def _cached_text_encoder(spec: EncoderSpec, fingerprint: str | None) -> GraphTextEncoder | None:
    import logging

    from clip_search.conf import clip_settings
    from clip_search.encoders import graph_cache

    options = clip_settings.TEXT_ENCODER
    if options["BACKEND"] != "onnx":
        return None
    folder = graph_cache.find(spec, options["QUANTIZE"], fingerprint)
    if folder is None:
        return None
    from clip_search.encoders.graph_text import GraphTextEncoder

    try:
        return GraphTextEncoder(folder, spec, threads=options["THREADS"], cache_size=options["CACHE_SIZE"])
    except Exception as error:  # an unreadable entry (disk, ORT version): rebuilt from the weights
        logging.getLogger(__name__).warning("Cached ONNX text graph %s unusable (%s); rebuilding.",
                                            folder, error)
        return None


def _built_text_encoder(spec: EncoderSpec) -> TextEncoder:
    from clip_search.conf import clip_settings
    from clip_search.encoders import graph_cache

    onnx = clip_settings.TEXT_ENCODER["BACKEND"] == "onnx"
    encoder = text_encoder_for(get_clip(spec, towers="text"), keep_graph=onnx)
    if onnx:
        graph_cache.store(spec, encoder)
    return encoder


def get_image_encoder(spec: EncoderSpec | None = None, towers: Towers = "both") -> ImageEncoder:
    """The process's image encoder. The worker loads both towers (moderation needs the text
    one too); an image query in the web process asks for ``towers="image"``, so the web keeps
    one text tower at most (the query encoder's) and an image tower only once asked for one."""
    spec = spec or EncoderSpec.from_settings()
    with _lock:
        if (spec, towers) not in _image:
            _image[(spec, towers)] = image_encoder_for(get_clip(spec, towers=towers))
        return _image[(spec, towers)]


def text_encoder_for(clip: LoadedClip, *, cache: bool = True, keep_graph: bool = False) -> TextEncoder:
    """A text encoder configured by ``CLIP_SEARCH["TEXT_ENCODER"]`` (``keep_graph``: for
    ``graph_cache.store``)."""
    from clip_search.conf import clip_settings
    from clip_search.encoders.text import TextEncoder

    options = clip_settings.TEXT_ENCODER
    return TextEncoder(clip, backend=options["BACKEND"], quantize=options["QUANTIZE"],
                       threads=options["THREADS"], cache_size=options["CACHE_SIZE"] if cache else 0,
                       keep_graph=keep_graph)


def image_encoder_for(clip: LoadedClip) -> ImageEncoder:
    """An image encoder configured by ``CLIP_SEARCH["IMAGE_ENCODER"]`` and ``BATCH_SIZE``."""
    from clip_search.conf import clip_settings
    from clip_search.encoders.image import ImageEncoder

    options = clip_settings.IMAGE_ENCODER
    return ImageEncoder(clip, backend=options["BACKEND"], quantize=options["QUANTIZE"],
                        draft=options["DRAFT"], threads=options["THREADS"],
                        decode_threads=options["DECODE_THREADS"], device=options["DEVICE"],
                        precision=options["PRECISION"], batch_size=clip_settings.BATCH_SIZE)


def reset() -> None:
    """Forget loaded models (tests, and after a settings change)."""
    import sys

    with _lock:
        _text.clear()
        _image.clear()
    if "clip_search.encoders.loader" in sys.modules:  # nothing was loaded otherwise
        sys.modules["clip_search.encoders.loader"].clear_cache()
