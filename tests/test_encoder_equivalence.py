"""Every fast encoder path gives stock open_clip's vectors (ViT-B-32, random weights).

The reference is stock open_clip: ``encode_text`` on the tokenizer's output, and the model's
``preprocess`` + ``encode_image`` on a full decode. Thresholds (cosine): ≥ 0.9999 for fp32
paths, ≥ 0.995 for int8 paths, ≥ 0.999 for reduced-scale JPEG decoding.

With random weights, image vectors of *different* images already have cosine 0.85–0.98 (the
embedding is dominated by a common component), so a raw cosine of 0.995 proves little there:
image paths are also compared after removing the stock vectors' mean over the test images
(``centred``), where different images are far apart.
No database: these tests never use the ``db`` fixture.
"""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from clip_search.encoders.image import ImageEncoder
from clip_search.encoders.loader import EncoderSpec, load_clip
from clip_search.encoders.text import TextEncoder

FP32 = 0.9999
FAST = 0.995

QUERIES = [
    "dress",
    "red dress",
    "Blue Leather handbag with a gold chain",
    "mens waterproof trail running shoes size 44 with extra grip",
    "",
    "ÜBER-soft  cashmere scarf, 100% wool!",
    # > 77 tokens: cut by the tokenizer (with a warning), never an exception.
    "very long query " + " ".join(f"word{i}" for i in range(120)),
]


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small tensor ops with 2 intra-op threads stall for tens of ms on a busy 2-core machine;
    one thread keeps this module fast and its timing stable. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip():
    return load_clip(EncoderSpec("ViT-B-32", "random"))


@pytest.fixture(scope="module")
def stock_text(clip):
    with torch.inference_mode():
        vectors = F.normalize(clip.model.encode_text(clip.tokenizer(QUERIES)), dim=-1).numpy()
    return dict(zip(QUERIES, vectors, strict=True))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


TEXT_PATHS = {
    "torch-fp32": ({}, FP32),
    "torch-int8": ({"quantize": True}, FAST),
    "onnx-fp32": ({"backend": "onnx"}, FP32),
    "onnx-int8": ({"backend": "onnx", "quantize": True}, FAST),
}


@pytest.fixture(scope="module")
def text_encoders(clip):
    return {}


def _text_encoder(clip, cache, name: str) -> TextEncoder:
    if name not in cache:
        kwargs, _ = TEXT_PATHS[name]
        if kwargs.get("backend") == "onnx" and not _has_onnx():
            pytest.skip("onnxruntime / onnx not installed")
        cache[name] = TextEncoder(clip, cache_size=4, **kwargs)
    return cache[name]


@pytest.mark.parametrize("path", list(TEXT_PATHS))
def test_text_path_matches_stock_one_by_one(clip, stock_text, text_encoders, path):
    encoder = _text_encoder(clip, text_encoders, path)
    assert encoder.backend == TEXT_PATHS[path][0].get("backend", "torch")
    ours = np.stack([encoder.encode([query])[0] for query in QUERIES])
    reference = np.stack([stock_text[query] for query in QUERIES])
    assert ours.dtype == np.float32 and ours.shape == (len(QUERIES), clip.dimension)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert _cosines(ours, reference).min() >= TEXT_PATHS[path][1]


@pytest.mark.parametrize("path", list(TEXT_PATHS))
def test_text_path_matches_stock_in_a_mixed_batch(clip, stock_text, text_encoders, path):
    """Short and long queries together: padding after each EOT must not leak in."""
    encoder = _text_encoder(clip, text_encoders, path)
    batch = [QUERIES[1], QUERIES[-1], QUERIES[0], QUERIES[3], QUERIES[4]]
    ours = encoder.encode(batch)
    assert _cosines(ours, np.stack([stock_text[q] for q in batch])).min() >= TEXT_PATHS[path][1]
    # A row does not depend on what else is in the batch (int8: activations are quantised with
    # one scale per batch, so only up to the int8 tolerance).
    alone = encoder.encode([batch[0]])[0]
    assert float(_cosines(ours[0], alone)) >= (FAST if "int8" in path else 0.999999)


def test_text_fp32_is_exact_to_float_precision(clip, stock_text, text_encoders):
    ours = _text_encoder(clip, text_encoders, "torch-fp32").encode(QUERIES)
    np.testing.assert_allclose(ours, np.stack([stock_text[q] for q in QUERIES]), atol=2e-5)


def test_text_longer_than_context_is_truncated_with_a_warning(clip, text_encoders, caplog):
    encoder = _text_encoder(clip, text_encoders, "torch-fp32")
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        vector = encoder.encode([QUERIES[-1]])[0]
    assert "truncated" in caplog.text
    assert np.isfinite(vector).all()
    assert encoder.tokenize([QUERIES[-1]]).shape[1] == encoder.context_length


def test_text_empty_input(clip, text_encoders):
    assert _text_encoder(clip, text_encoders, "torch-fp32").encode([]).shape == (0, clip.dimension)


def test_text_cache_returns_the_same_vector_and_stays_bounded(clip, text_encoders):
    encoder = TextEncoder(clip, cache_size=3)
    first = encoder.encode_query("red dress")
    again = encoder.encode_query("  Red   DRESS ")  # same words once normalised
    assert again is first and np.array_equal(again, encoder.encode(["red dress"])[0])
    assert not first.flags.writeable  # callers cannot corrupt the cached vector
    for query in ("a", "b", "c", "d", "e"):
        encoder.encode_query(query)
        assert len(encoder._cache) <= 3
    assert list(encoder._cache) == ["c", "d", "e"]  # least recently used went first
    encoder.encode_query("d")
    encoder.encode_query("f")
    assert list(encoder._cache) == ["e", "d", "f"]
    encoder.cache_clear()
    assert len(encoder._cache) == 0
    uncached = TextEncoder(clip, cache_size=0)
    uncached.encode_query("red dress")
    assert len(uncached._cache) == 0


def test_unknown_backend_is_refused(clip):
    with pytest.raises(ValueError, match="backend"):
        TextEncoder(clip, backend="tensorrt")
    with pytest.raises(ValueError, match="backend"):
        ImageEncoder(clip, backend="tensorrt")


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_rebuilt_transformers_match_open_clip_on_other_block_options(causal, batch_first):
    """QuickGELU, LayerScale, sequence-first blocks (other open_clip configs). The call takes
    (N, L, D) either way."""
    from open_clip.transformer import QuickGELU, Transformer

    from clip_search.encoders.text import FusedTransformer, quantized_transformer

    torch.manual_seed(0)
    tower = Transformer(64, 2, 4, ls_init_value=0.5, act_layer=QuickGELU, batch_first=batch_first).eval()
    for block in tower.resblocks:
        block.ls_1.gamma.data.uniform_(0.2, 2.0)
        block.ls_2.gamma.data.uniform_(0.2, 2.0)
    x = torch.randn(3, 9, 64)
    mask = torch.full((9, 9), float("-inf")).triu(1) if causal else None
    with torch.inference_mode():
        reference = tower(x, attn_mask=mask)
        rebuilt = {"fused": FusedTransformer(tower, causal=causal)(x, attn_mask=mask)}
        int8 = {"torch-int8": quantized_transformer(tower, causal=causal)(x, attn_mask=mask)}
        if _has_onnx():
            from clip_search.encoders.onnx_text import OnnxTransformer

            rebuilt["onnx"] = OnnxTransformer(tower, causal=causal, quantize=False)(x, attn_mask=mask)
            int8["onnx-int8"] = OnnxTransformer(tower, causal=causal, quantize=True)(x, attn_mask=mask)
    for name, out in rebuilt.items():
        torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4, msg=name)
    for name, out in int8.items():
        assert out.shape == reference.shape
        assert _cosines(out.reshape(-1, 64).numpy(), reference.reshape(-1, 64).numpy()).min() >= 0.99, name


# --- images ------------------------------------------------------------------------------


def _product_photo(width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    top = np.array([rng.randint(180, 255) for _ in range(3)], np.float32)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(top * (1 - 0.3 * ramp), (height, width, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    w, h = int(width * rng.uniform(0.3, 0.7)), int(height * rng.uniform(0.3, 0.7))
    box = [width // 2 - w // 2, height // 2 - h // 2, width // 2 + w // 2, height // 2 + h // 2]
    (draw.ellipse if seed % 2 else draw.rectangle)(box, fill=colour, outline=(10, 10, 10), width=5)
    for _ in range(6):
        x, y, r = rng.randint(box[0], box[2]), rng.randint(box[1], box[3]), rng.randint(5, w // 8 + 6)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(255 - c for c in colour))
    noise = np.random.default_rng(seed).normal(0, 5, (height, width, 3))
    image = image.filter(ImageFilter.BoxBlur(1))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, orientation: int = 0) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


@pytest.fixture(scope="module")
def photos():
    """Four decoded product photos of various sizes and aspect ratios."""
    sizes = [(640, 480), (300, 520), (800, 800), (1200, 700)]
    return [_product_photo(w, h, seed) for seed, (w, h) in enumerate(sizes)]


@pytest.fixture(scope="module")
def stock_images(clip, photos):
    with torch.inference_mode():
        pixels = torch.stack([clip.preprocess(photo) for photo in photos])
        return F.normalize(clip.model.encode_image(pixels), dim=-1).numpy()


def _assert_same_images(ours: np.ndarray, reference: np.ndarray, threshold: float) -> None:
    assert ours.shape == reference.shape
    assert _cosines(ours, reference).min() >= threshold
    centre = reference.mean(axis=0)
    centred = _cosines(ours - centre, reference - centre)
    # Different images, centred, are nowhere near each other; the same image must stay put.
    assert centred.min() >= (0.999 if threshold >= FP32 else 0.98), centred


IMAGE_PATHS = {
    "torch-fp32": ({}, FP32),
    "torch-int8": ({"quantize": True}, FAST),
    "onnx-fp32": ({"backend": "onnx"}, FP32),
    "onnx-int8": ({"backend": "onnx", "quantize": True}, FAST),
}


@pytest.mark.parametrize("path", list(IMAGE_PATHS))
def test_image_path_matches_stock(clip, photos, stock_images, path):
    kwargs, threshold = IMAGE_PATHS[path]
    if kwargs.get("backend") == "onnx" and not _has_onnx():
        pytest.skip("onnxruntime / onnx not installed")
    encoder = ImageEncoder(clip, batch_size=3, **kwargs)  # 4 images: two batches
    assert encoder.backend == kwargs.get("backend", "torch")
    _assert_same_images(encoder.encode_images(photos), stock_images, threshold)


def test_batched_preprocess_is_bit_identical_to_stock(clip, photos):
    encoder = ImageEncoder(clip)
    grey = Image.new("L", (333, 222), 90).convert("RGB")
    images = [*photos, grey]
    expected = torch.stack([clip.preprocess(image) for image in images])
    assert torch.equal(encoder.preprocess(images), expected)
    # Mixed with an item that took the plain per-image preprocess: still identical.
    mixed = encoder._collate([encoder._prepare(images[0]), clip.preprocess(images[1])])
    assert torch.equal(mixed, expected[:2])


DRAFT = 0.999  # DESIGN.md: reduced-size decoding must give the same vectors


def test_large_jpeg_with_draft_decoding_matches_full_decode(clip):
    """2400×1800 and 1389×1651 JPEGs (the latter rounds differently when drafted) decoded at a
    reduced DCT scale vs stock full decode + preprocess; then the same with EXIF rotations."""
    photos = [_product_photo(2400, 1800, 10), _product_photo(1389, 1651, 11)]
    encoder = ImageEncoder(clip, draft=True)
    exact = ImageEncoder(clip, draft=False)
    for orientation in (0, 3, 6):
        blobs = [_jpeg(photo, orientation) for photo in photos]
        decoded_full = [ImageOps.exif_transpose(Image.open(io.BytesIO(b))).convert("RGB") for b in blobs]
        with torch.inference_mode():
            full = torch.stack([clip.preprocess(image) for image in decoded_full])
            reference = F.normalize(clip.model.encode_image(full), dim=-1).numpy()
        decoded = encoder.decode(blobs[0])
        landscape = orientation != 6
        assert (decoded.width > decoded.height) == landscape
        assert min(decoded.size) == encoder.input_size  # decoded small, already resized exactly
        ours = np.stack([result.vector for result in encoder.encode_bytes(blobs)])
        assert _cosines(ours, reference).min() >= DRAFT, orientation
        # One vector per image, not swapped, not collapsed.
        assert float(_cosines(ours[0], reference[0])) > float(_cosines(ours[0], reference[1]))
        assert exact.decode(blobs[0]).size == ((2400, 1800) if landscape else (1800, 2400))
        vectors = np.stack([r.vector for r in exact.encode_bytes(blobs)])
        assert _cosines(vectors, reference).min() >= FP32


def test_bad_bytes_do_not_spoil_the_batch(clip, photos):
    encoder = ImageEncoder(clip, batch_size=2)  # streamed in batches of 2
    blobs = [_jpeg(photos[0]), b"not an image", _jpeg(photos[1]), _jpeg(photos[2])]
    results = encoder.encode_bytes(blobs)
    assert results[1].vector is None and results[1].error.code == "not_an_image"
    assert all(results[i].vector is not None and results[i].error is None for i in (0, 2, 3))
    good = [results[i].vector for i in (0, 2, 3)]
    decoded = [Image.open(io.BytesIO(blobs[i])).convert("RGB") for i in (0, 2, 3)]
    np.testing.assert_allclose(np.stack(good), encoder.encode_images(decoded), atol=1e-5)
