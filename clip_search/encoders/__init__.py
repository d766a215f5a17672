"""CLIP encoders: one loader, a fast query-text encoder, a batched image encoder.

Process-wide instances come from ``get_text_encoder()`` / ``get_image_encoder()``: a web
process that answers text queries asks only for the text encoder and so never keeps the image
tower in memory.
"""

from __future__ import annotations

import threading

from clip_search.encoders.image import ImageEncoder, ImageResult
from clip_search.encoders.loader import (
    EncoderLoadError,
    EncoderSpec,
    LoadedClip,
    Towers,
    clear_cache,
    get_clip,
    load_clip,
)
from clip_search.encoders.text import TextEncoder

__all__ = [
    "EncoderLoadError", "EncoderSpec", "ImageEncoder", "ImageResult", "LoadedClip", "TextEncoder",
    "get_clip", "get_image_encoder", "get_text_encoder", "image_encoder_for", "load_clip", "reset",
    "text_encoder_for",
]

_lock = threading.Lock()
_text: dict[EncoderSpec, TextEncoder] = {}
_image: dict[tuple[EncoderSpec, Towers], ImageEncoder] = {}


def get_text_encoder(spec: EncoderSpec | None = None) -> TextEncoder:
    """The process's query encoder for ``spec`` (the settings' model by default)."""
    spec = spec or EncoderSpec.from_settings()
    with _lock:
        if spec not in _text:
            _text[spec] = text_encoder_for(get_clip(spec, towers="text"))
        return _text[spec]


def get_image_encoder(spec: EncoderSpec | None = None, towers: Towers = "both") -> ImageEncoder:
    """The process's image encoder. The worker loads both towers (moderation needs the text
    one too); an image query in the web process asks for ``towers="image"``, so the web keeps
    one text tower at most (the query encoder's) and an image tower only once asked for one."""
    spec = spec or EncoderSpec.from_settings()
    with _lock:
        if (spec, towers) not in _image:
            _image[(spec, towers)] = image_encoder_for(get_clip(spec, towers=towers))
        return _image[(spec, towers)]


def text_encoder_for(clip: LoadedClip, *, cache: bool = True) -> TextEncoder:
    """A text encoder configured by ``CLIP_SEARCH["TEXT_ENCODER"]``."""
    from clip_search.conf import clip_settings

    options = clip_settings.TEXT_ENCODER
    return TextEncoder(clip, backend=options["BACKEND"], quantize=options["QUANTIZE"],
                       threads=options["THREADS"], cache_size=options["CACHE_SIZE"] if cache else 0)


def image_encoder_for(clip: LoadedClip) -> ImageEncoder:
    """An image encoder configured by ``CLIP_SEARCH["IMAGE_ENCODER"]`` and ``BATCH_SIZE``."""
    from clip_search.conf import clip_settings

    options = clip_settings.IMAGE_ENCODER
    return ImageEncoder(clip, backend=options["BACKEND"], quantize=options["QUANTIZE"],
                        draft=options["DRAFT"], threads=options["THREADS"],
                        batch_size=clip_settings.BATCH_SIZE)


def reset() -> None:
    """Forget loaded models (tests, and after a settings change)."""
    with _lock:
        _text.clear()
        _image.clear()
    clear_cache()
