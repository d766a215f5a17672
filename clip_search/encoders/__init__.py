"""CLIP encoders: one loader, a fast query-text encoder, a batched image encoder.

Process-wide instances come from ``get_text_encoder()`` / ``get_image_encoder()``: the web
process asks only for the text encoder and so never keeps the image tower in memory.
"""

from __future__ import annotations

import threading

from clip_search.encoders.image import ImageEncoder, ImageResult
from clip_search.encoders.loader import (
    EncoderLoadError,
    EncoderSpec,
    LoadedClip,
    clear_cache,
    get_clip,
    load_clip,
)
from clip_search.encoders.text import TextEncoder

__all__ = [
    "EncoderLoadError", "EncoderSpec", "ImageEncoder", "ImageResult", "LoadedClip", "TextEncoder",
    "get_clip", "get_image_encoder", "get_text_encoder", "load_clip", "reset",
]

_lock = threading.Lock()
_text: dict[EncoderSpec, TextEncoder] = {}
_image: dict[EncoderSpec, ImageEncoder] = {}


def get_text_encoder(spec: EncoderSpec | None = None) -> TextEncoder:
    """The process's query encoder for ``spec`` (the settings' model by default)."""
    from clip_search.conf import clip_settings

    spec = spec or EncoderSpec.from_settings()
    with _lock:
        if spec not in _text:
            options = clip_settings.TEXT_ENCODER
            _text[spec] = TextEncoder(get_clip(spec, towers="text"), quantize=options["QUANTIZE"],
                                      cache_size=options["CACHE_SIZE"])
        return _text[spec]


def get_image_encoder(spec: EncoderSpec | None = None) -> ImageEncoder:
    """The worker's image encoder (loads both towers: moderation needs the text one too)."""
    from clip_search.conf import clip_settings

    spec = spec or EncoderSpec.from_settings()
    with _lock:
        if spec not in _image:
            _image[spec] = ImageEncoder(get_clip(spec, towers="both"),
                                        batch_size=clip_settings.BATCH_SIZE)
        return _image[spec]


def reset() -> None:
    """Forget loaded models (tests, and after a settings change)."""
    with _lock:
        _text.clear()
        _image.clear()
    clear_cache()
