"""Decode untrusted image bytes safely into an RGB PIL image, or say exactly why not.

Used by the embed task, the admin and the API alike, so every door rejects the same files
with the same reason. Limits: bytes, pixels (checked from the header before decoding, and
Pillow's decompression-bomb warning turned into an error), and an allow-list of formats
(EPS/PS are never opened: Pillow runs Ghostscript for them).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from django.utils.translation import gettext_lazy as _
from PIL import Image, ImageOps, UnidentifiedImageError

from clip_search.conf import clip_settings

# What Pillow raises on malformed input (plus its bomb error). Anything else is a bug and
# surfaces as one.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, MemoryError, NotImplementedError,
                 OverflowError, EOFError, Image.DecompressionBombError)


class ImageRejected(ValueError):
    """The bytes are not an image clip_search will embed. ``code`` is stable for APIs;
    ``message`` is for anyone (a shopper who uploaded it), ``detail`` for staff and logs (what
    the decoder said: it names libraries and internals a shopper has no use for)."""

    def __init__(self, code: str, message: str, detail: str = "") -> None:
        super().__init__(f"{message} ({detail})" if detail else message)
        self.code = code
        self.message = message
        self.detail = detail


def _formats() -> set[str]:
    return {f.upper() for f in clip_settings.IMAGE["FORMATS"]} - {"EPS", "PS"}


def decode_image(data: bytes, *, max_bytes: int | None = None, max_pixels: int | None = None,
                 formats: Iterable[str] | None = None, draft_size: int | None = None) -> Image.Image:
    """RGB image with EXIF orientation applied; first frame of an animation.

    ``draft_size``: a JPEG may be decoded at a reduced DCT scale, never below this size.
    """
    max_bytes = max_bytes or clip_settings.IMAGE["MAX_BYTES"]
    max_pixels = max_pixels or clip_settings.IMAGE["MAX_PIXELS"]
    allowed = {f.upper() for f in formats} if formats is not None else _formats()
    if not data:
        raise ImageRejected("empty", str(_("The file is empty.")))
    if len(data) > max_bytes:
        raise ImageRejected("too_large", str(_("The file is %(size)d bytes; the limit is %(limit)d.")
                                            % {"size": len(data), "limit": max_bytes}))
    try:
        # No warnings.catch_warnings(): it is not thread-safe and workers decode in threads.
        # The explicit pixel check below is stricter than Pillow's bomb warning (89 M pixels)
        # for any sane MAX_PIXELS, and Pillow raises DecompressionBombError past 2× of it.
        Image.init()  # registers every plugin, so OPEN lists what this Pillow can read
        image = Image.open(io.BytesIO(data), formats=sorted(allowed & set(Image.OPEN)))
        if image.format not in allowed:
            raise ImageRejected("format", str(_("Image format %(format)s is not allowed.")
                                             % {"format": image.format}))
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageRejected("broken", str(_("The image has no pixels.")))
        if width * height > max_pixels:
            raise ImageRejected("too_many_pixels", str(
                _("The image is %(w)d×%(h)d pixels; the limit is %(limit)d pixels.")
                % {"w": width, "h": height, "limit": max_pixels}))
        if draft_size and image.format == "JPEG":
            image.draft(image.mode, (draft_size, draft_size))
        image.seek(0)  # animated: the first frame stands for the product
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected("too_many_pixels", str(
            _("The image claims more pixels than can be decoded safely.")),
            f"decompression bomb: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageRejected("not_an_image", str(_("The file is not an image we can read.")),
                            str(error)) from error
    except DECODE_ERRORS as error:
        raise ImageRejected("broken", str(_("The image could not be decoded.")),
                            str(error) or type(error).__name__) from error


def to_rgb(image: Image.Image) -> Image.Image:
    """CMYK, palette, alpha, grey, 16-bit → 8-bit RGB; transparency composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")

