"""Shared helpers of the encoder benchmarks (run from the repo root with ``PYTHONPATH=.``)."""

from __future__ import annotations

import io
import logging
import os
import platform
import random
import time
import warnings

import numpy as np


def setup() -> None:
    """Minimal Django settings (no database: ``imaging`` only reads CLIP_SEARCH), quiet logs."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(USE_I18N=False, INSTALLED_APPS=[], CLIP_SEARCH={})
        django.setup()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)


def machine() -> str:
    import onnxruntime
    import open_clip
    import torch

    return (f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"open_clip {open_clip.__version__}, onnxruntime {onnxruntime.__version__}")


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def product_jpegs(count: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    """Photo-like product shots, 1000–2000 px: a soft background, a drawn product (body, handle,
    pattern, shadow), then sensor noise and a slight blur so JPEG has real texture to code."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        width, height = rng.randint(1000, 2000), rng.randint(1000, 2000)
        top = np.array([rng.randint(200, 255) for _ in range(3)], np.float32)
        bottom = top * rng.uniform(0.7, 0.95)
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        cx, cy = width // 2 + rng.randint(-width // 10, width // 10), height // 2
        w, h = int(width * rng.uniform(0.3, 0.6)), int(height * rng.uniform(0.3, 0.6))
        draw.ellipse([cx - w // 2, cy + h // 2 - h // 12, cx + w // 2, cy + h // 2 + h // 12],
                     fill=(90, 90, 90))
        shape = rng.choice(["rect", "ellipse", "polygon"])
        box = [cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2]
        if shape == "rect":
            draw.rounded_rectangle(box, radius=min(w, h) // 8, fill=colour, outline=(20, 20, 20), width=6)
        elif shape == "ellipse":
            draw.ellipse(box, fill=colour, outline=(20, 20, 20), width=6)
        else:
            draw.polygon([(cx, cy - h // 2), (cx + w // 2, cy + h // 2), (cx - w // 2, cy + h // 2)],
                         fill=colour, outline=(20, 20, 20))
        draw.arc([cx - w // 4, cy - h // 2 - h // 4, cx + w // 4, cy - h // 2 + h // 8], 180, 360,
                 fill=(30, 30, 30), width=max(8, w // 40))
        accent = tuple(255 - c for c in colour)
        for _ in range(rng.randint(3, 12)):
            px, py = rng.randint(box[0], box[2]), rng.randint(box[1], box[3])
            r = rng.randint(10, max(11, w // 12))
            draw.ellipse([px - r, py - r, px + r, py + r], fill=accent)
        image = image.filter(ImageFilter.BoxBlur(1))
        noise = noise_rng.standard_normal((height, width, 3), dtype=np.float32)
        noisy = np.asarray(image, np.float32) + 6 * noise
        out = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
        blobs.append(out.getvalue())
    return blobs
