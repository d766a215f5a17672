"""Query text encoding, batch 1, uncached: stock open_clip ``encode_text`` vs ``TextEncoder``.

    cd /work/main && PYTHONPATH=. .venv/bin/python bench/text_encoder.py [--rounds 3]

ViT-B-32 with random weights (the real architecture; speed does not depend on the values).
Every variant runs every query once per round, rounds interleaved, so a noisy shared VM
slows all variants alike; the ratios are the figures to trust. Stock and the torch variants
are timed at 1 and 2 torch threads; the ONNX variants with 1 and 2 session threads.
Cosine: each variant's vector vs stock ``encode_text`` (normalised), min over the queries.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402

QUERIES = [
    "dress", "red dress", "leather handbag", "wireless earbuds", "running shoes men",
    "blue denim jacket", "stainless steel water bottle", "wooden coffee table",
    "kids rain boots yellow", "organic cotton t-shirt white", "noise cancelling headphones black",
    "ceramic vase with flowers", "gold hoop earrings small", "linen duvet cover queen size",
    "waterproof hiking backpack 30 litres", "vintage round sunglasses tortoise shell",
    "mens slim fit chino trousers beige", "cast iron skillet 12 inch pre seasoned",
    "soft plush teddy bear for toddlers", "ergonomic office chair with lumbar support",
    "womens black leather ankle boots with block heel", "smart watch with heart rate monitor",
    "bamboo cutting board set of three", "floral summer maxi dress with short sleeves",
    "usb c charging cable two metres braided", "scented soy candle lavender in glass jar",
    "red and white striped cotton beach towel large", "mid century modern walnut sideboard",
    "electric toothbrush with two replacement heads and travel case",
    "silver necklace with small heart pendant for women",
    "kids wooden train set with tracks and bridge", "compact espresso machine with milk frother",
    "oversized wool blend coat camel colour for winter", "yoga mat non slip extra thick purple",
    "set of four handmade blue ceramic coffee mugs", "lightweight packable down jacket navy blue",
    "adjustable dumbbells pair up to 24 kg with stand",
    "green velvet armchair with gold metal legs for living room",
    "retro style bluetooth speaker with fm radio and leather strap",
    "waterproof trail running shoes for women with extra grip on wet rocks",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    _util.setup()

    import numpy as np
    import torch
    import torch.nn.functional as F

    from clip_search.encoders.loader import EncoderSpec, load_clip
    from clip_search.encoders.text import TextEncoder

    assert all(1 <= len(q.split()) <= 12 for q in QUERIES)
    clip = load_clip(EncoderSpec("ViT-B-32", "random"), towers="text")
    model, tokenizer = clip.model, clip.tokenizer
    default_threads = torch.get_num_threads()

    def stock(text: str) -> np.ndarray:
        with torch.inference_mode():
            return F.normalize(model.encode_text(tokenizer([text])), dim=-1).numpy()[0]

    started = time.perf_counter()
    built = {}
    t0 = time.perf_counter()
    encoders = {
        "ours torch fp32 (truncated)": TextEncoder(clip, cache_size=0),
        "ours torch int8": TextEncoder(clip, cache_size=0, quantize=True),
        "ours onnx fp32 1t": TextEncoder(clip, cache_size=0, backend="onnx", threads=1),
        "ours onnx int8 1t": TextEncoder(clip, cache_size=0, backend="onnx", quantize=True, threads=1),
        "ours onnx int8 2t": TextEncoder(clip, cache_size=0, backend="onnx", quantize=True, threads=2),
    }
    built["build s"] = time.perf_counter() - t0
    # (name, callable, torch threads)
    def ours(name: str):
        return lambda q: encoders[name].encode([q])[0]

    variants = [
        ("stock encode_text torch 1t", stock, 1),
        ("stock encode_text torch 2t", stock, 2),
        ("ours torch fp32 (truncated) torch 1t", ours("ours torch fp32 (truncated)"), 1),
        ("ours torch fp32 (truncated) torch 2t", ours("ours torch fp32 (truncated)"), 2),
        ("ours torch int8 torch 1t", ours("ours torch int8"), 1),
        ("ours torch int8 torch 2t", ours("ours torch int8"), 2),
    ] + [(name, ours(name), 1) for name in ("ours onnx fp32 1t", "ours onnx int8 1t", "ours onnx int8 2t")]

    reference = {q: stock(q) for q in QUERIES}
    cosine = {}
    for name, fn, threads in variants:
        torch.set_num_threads(threads)
        key = name.rsplit(" torch ", 1)[0]  # same encoder at another thread count: same vectors
        if key not in cosine:
            cosine[key] = min(float(_util.cosine_rows(fn(q), reference[q])) for q in QUERIES)
        cosine[name] = cosine[key]
        for q in QUERIES[:3]:  # warm-up
            fn(q)

    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.rounds):
        for name, fn, threads in variants:
            torch.set_num_threads(threads)
            for q in QUERIES:
                start = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - start)
    torch.set_num_threads(default_threads)

    p50 = {name: _util.percentile_ms(ts, 50) for name, ts in times.items()}
    best_stock = min(v for k, v in p50.items() if k.startswith("stock"))
    print(f"# Text query encoding, ViT-B-32 (random weights), batch 1, uncached — {_util.machine()}")
    print(f"# {len(QUERIES)} queries of 1–12 words × {args.rounds} rounds, interleaved; "
          f"ONNX graphs built in {built['build s']:.1f} s")
    print(f"{'variant':40s} {'p50 ms':>8s} {'p95 ms':>8s} {'× best stock':>13s} {'min cosine':>11s}")
    for name, _, _ in variants:
        print(f"{name:40s} {p50[name]:8.1f} {_util.percentile_ms(times[name], 95):8.1f} "
              f"{best_stock / p50[name]:13.1f} {cosine[name]:11.6f}")
    print(f"# wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
