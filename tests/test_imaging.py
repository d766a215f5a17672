"""Every kind of bad or odd image gets a clear error or is handled correctly."""

import io
import struct
import zlib

import pytest
from PIL import Image

from clip_search.imaging import ImageRejected, decode_image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rejected(data: bytes, **limits) -> ImageRejected:
    with pytest.raises(ImageRejected) as error:
        decode_image(data, **limits)
    return error.value


def huge_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header claims width×height 1-bit pixels (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc
    raw = zlib.compress(b"\x00" * (width // 8 + 1) * 16)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"just some text renamed to .jpg\n", "not_an_image"),
        (b"<!doctype html><html><body>hi</body></html>", "not_an_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not_an_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not_an_image"),
    ],
    ids=["zero-bytes", "text", "html", "svg", "eps"],
)
def test_non_images_are_rejected(data, code):
    assert rejected(data).code == code


def test_truncated_jpeg_and_png_are_broken():
    picture = Image.new("RGB", (256, 256), (200, 30, 30))
    for fmt in ("JPEG", "PNG"):
        data = encode(picture.effect_spread(10) if fmt == "PNG" else picture, fmt)
        error = rejected(data[: len(data) // 2])
        assert error.code == "broken", (fmt, error.message)
        assert error.message == "The image could not be decoded." and error.detail  # the decoder's words


def test_decompression_bombs_are_rejected_before_decoding():
    error = rejected(huge_png(60_000, 60_000))  # past Pillow's own hard limit
    assert error.code == "too_many_pixels" and "decompression bomb" in error.detail
    assert "decompression" not in error.message  # what a shopper reads names no decoder
    error = rejected(huge_png(10_000, 6_000))  # under Pillow's limit, over ours (50 M pixels)
    assert error.code == "too_many_pixels" and "10000×6000" in error.message


def test_pixel_and_byte_limits():
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    assert rejected(data, max_pixels=50_000).code == "too_many_pixels"
    assert rejected(data, max_bytes=100).code == "too_large"


def test_disallowed_format_is_named():
    data = encode(Image.new("RGB", (8, 8)), "BMP")
    error = rejected(data, formats=["JPEG", "PNG"])
    assert error.code in ("format", "not_an_image")


@pytest.mark.parametrize("size", [(1, 1), (30000, 10)])
def test_extreme_shapes_decode(size):
    image = decode_image(encode(Image.new("RGB", size, (10, 200, 10)), "PNG"))
    assert image.size == size and image.mode == "RGB"


def test_cmyk_jpeg_becomes_rgb():
    image = decode_image(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"))
    assert image.mode == "RGB"
    r, g, b = image.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red


def test_16_bit_png_becomes_8_bit_rgb():
    image = decode_image(encode(Image.new("I;16", (16, 16), 65535), "PNG"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0] * 256)
    image = decode_image(encode(palette, "PNG", transparency=0))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)


def test_rgba_alpha_is_composited_on_white():
    image = decode_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = decode_image(data)
    r, g, b = image.getpixel((10, 10))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    picture = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode_image(encode(picture, "JPEG", exif=exif.tobytes()))
    assert image.size == (20, 40)


def test_corrupt_exif_block_still_decodes_or_is_rejected_clearly():
    garbage_exif = b"Exif\x00\x00" + b"\xff" * 64
    data = bytearray(encode(Image.new("RGB", (16, 16), (0, 128, 0)), "JPEG", exif=garbage_exif))
    try:
        image = decode_image(bytes(data))
    except ImageRejected as error:
        assert error.code == "broken"
    else:
        assert image.mode == "RGB" and image.size == (16, 16)


def test_webp_and_huge_icc_profile():
    webp = decode_image(encode(Image.new("RGB", (12, 12), (1, 2, 3)), "WEBP", lossless=True))
    assert webp.getpixel((0, 0)) == (1, 2, 3)
    icc = decode_image(encode(Image.new("RGB", (12, 12)), "JPEG", icc_profile=b"\0" * 2_000_000))
    assert icc.size == (12, 12)


def test_draft_decoding_keeps_at_least_the_asked_size():
    data = encode(Image.new("RGB", (2000, 1500), (90, 90, 90)), "JPEG")
    image = decode_image(data, draft_size=448)
    assert 448 <= min(image.size) < 1500


def test_a_sliver_is_cut_to_its_middle_before_resizing(demo_clip):
    """30000×10 px: stock would resize to 672000×224 first; ours never makes that image."""
    from clip_search.encoders import ImageEncoder

    sliver = Image.new("RGB", (30000, 10), (255, 255, 255))
    sliver.paste((200, 20, 20), (14998, 0, 15002, 10))  # a red mark in the middle
    encoder = ImageEncoder(demo_clip)
    prepared = encoder._prepare(decode_image(encode(sliver, "PNG")))
    assert prepared.shape[:2] == (encoder.input_size, encoder.input_size)
    green = prepared[:, :, 1]
    assert green.max() > 250 and green.min() < 100  # the middle: white around the red mark
    result = encoder.encode_bytes([encode(sliver, "PNG")])[0]
    assert result.error is None and abs(float((result.vector ** 2).sum()) - 1) < 1e-4
