"""Image encoding at batch 32: stock open_clip (``preprocess`` + ``encode_image``) vs ``ImageEncoder``.

    cd /work/main && PYTHONPATH=. .venv/bin/python bench/image_encoder.py [--rounds 3]

ViT-B-32 with random weights (the real architecture; speed does not depend on the values).
Two measurements, each with the variants interleaved in the same run (a shared VM slows all
of them alike; trust the ratios):
- model only: the same preprocessed batch of 32 tensors through each variant's image tower;
- end to end: 32 photo-like JPEGs of 1000–2000 px (bytes) → vectors, decode and preprocessing
  included; stock decodes with Pillow in full, ours with ``ImageEncoder.encode_bytes``
  (``draft``: reduced-scale JPEG decoding).
Cosine: each variant's vectors vs stock's on the same input, min over the 32 images.
``IMAGE_ENCODER["PRECISION"]`` on this CPU (bf16 autocast) is a row of its own; with a CUDA
device, the GPU worker's rows (``DEVICE="cuda"``, fp32 / fp16 / bf16) are added, model only
and end to end (decoding stays on the CPU threads); without one the run says so.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _util  # noqa: E402

BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    _util.setup()
    started = time.perf_counter()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from clip_search.encoders.image import ImageEncoder
    from clip_search.encoders.loader import EncoderSpec, load_clip

    clip = load_clip(EncoderSpec("ViT-B-32", "random"))
    model, preprocess = clip.model, clip.preprocess
    t0 = time.perf_counter()
    encoders = {
        "ours torch fp32": ImageEncoder(clip, draft=False),
        "ours torch int8": ImageEncoder(clip, draft=False, quantize=True),
        "ours onnx fp32": ImageEncoder(clip, draft=False, backend="onnx"),
        "ours onnx int8": ImageEncoder(clip, draft=False, backend="onnx", quantize=True),
        "ours torch bf16 autocast (CPU)": ImageEncoder(clip, draft=False, precision="bf16"),
    }
    gpu = {f"ours cuda {precision}": ImageEncoder(clip, draft=True, device="cuda", precision=precision)
           for precision in ("fp32", "fp16", "bf16")} if torch.cuda.is_available() else {}
    encoders.update(gpu)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    blobs = _util.product_jpegs(BATCH)
    jpeg_s = time.perf_counter() - t0

    def stock_pixels(batch: list[bytes]) -> torch.Tensor:
        return torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in batch])

    def stock_model(pixels: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return F.normalize(model.encode_image(pixels), dim=-1).numpy()

    def run(fns: dict, arg) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
        times: dict[str, list[float]] = {name: [] for name in fns}
        outputs: dict[str, np.ndarray] = {}
        names = list(fns)
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:  # ABC CBA: drift cancels
                start = time.perf_counter()
                outputs[name] = fns[name](arg)
                times[name].append(time.perf_counter() - start)
        return times, outputs

    def report(title: str, times: dict[str, list[float]], outputs: dict[str, np.ndarray]) -> None:
        rate = {name: BATCH / float(np.median(ts)) for name, ts in times.items()}
        base = next(iter(rate.values()))
        reference = next(iter(outputs.values()))
        print(f"\n## {title}")
        print(f"{'variant':44s} {'images/s':>9s} {'× stock':>8s} {'min cosine':>11s}")
        for name in times:
            out = outputs[name]
            cos = "" if out is None else f"{_util.cosine_rows(out, reference).min():11.6f}"
            print(f"{name:44s} {rate[name]:9.2f} {rate[name] / base:8.2f} {cos:>11s}")

    pixels = stock_pixels(blobs)
    model_fns = {"stock encode_image": stock_model}
    model_fns.update({name: enc.encode_tensor for name, enc in encoders.items()})
    for fn in model_fns.values():  # warm-up (ORT pre-packing, allocator)
        fn(pixels[:4])
    model_times, model_out = run(model_fns, pixels)

    draft_int8 = ImageEncoder(clip, draft=True, backend="onnx", quantize=True)
    draft_torch_int8 = ImageEncoder(clip, draft=True, quantize=True)
    draft_fp32 = ImageEncoder(clip, draft=True)

    def bytes_fn(encoder: ImageEncoder):
        return lambda batch: np.stack([r.vector for r in encoder.encode_bytes(batch)])

    e2e_fns = {
        "stock full decode + encode_image": lambda batch: stock_model(stock_pixels(batch)),
        "ours fp32 exact (no draft, torch)": bytes_fn(encoders["ours torch fp32"]),
        "ours draft + torch fp32": bytes_fn(draft_fp32),
        "ours draft + torch int8": bytes_fn(draft_torch_int8),
        "ours draft + onnx int8": bytes_fn(draft_int8),
        **{f"{name} (draft decode on the CPU)": bytes_fn(encoder) for name, encoder in gpu.items()},
    }
    e2e_times, e2e_out = run(e2e_fns, blobs)
    prep_fns = {
        "stock decode + preprocess only": stock_pixels,
        "ours draft decode + preprocess only": lambda batch: draft_fp32.preprocess(
            [draft_fp32.decode(b) for b in batch]),
    }
    prep_times, _ = run(prep_fns, blobs)

    sizes = [Image.open(io.BytesIO(b)).size for b in blobs]
    print(f"# Image encoding, ViT-B-32 (random weights), batch {BATCH} — {_util.machine()}")
    print(f"# {args.rounds} interleaved rounds; ONNX graphs built in {build_s:.1f} s; {BATCH} JPEGs "
          f"({min(min(s) for s in sizes)}–{max(max(s) for s in sizes)} px, "
          f"{sum(map(len, blobs)) / len(blobs) / 1e3:.0f} kB avg) drawn in {jpeg_s:.1f} s")
    if not gpu:
        print("# no CUDA device here: the GPU worker's rows (DEVICE='cuda') are skipped")
    report("model only (preprocessed tensors)", model_times, model_out)
    report("end to end (JPEG bytes → vectors)", e2e_times, e2e_out)
    report("decode + preprocess only", prep_times, {name: None for name in prep_times})
    print(f"\n# wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
