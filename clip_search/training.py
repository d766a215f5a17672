"""Contrastive training and fine-tuning of an open_clip model on a catalog's (image, text) pairs.

The same code serves a shop fine-tuning ViT-B-32 on its own products (FashionCLIP-style) and
this project making its small demo/test model from a procedurally drawn catalog. The result
is written in open_clip's ``local-dir:`` layout (``open_clip_config.json`` + safetensors), so
``CLIP_SEARCH["MODEL"] = "local-dir:/path"`` loads it with the ordinary loader.

A training set comes from a *source*: a callable returning a ``TrainingSet``. The default
source reads the registered models from the database; ``--source module:function`` plugs in
another (the demo's draws its catalog).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


@dataclass
class Example:
    """One image with its captions (one is drawn per step) and a label for evaluation."""

    image: Image.Image
    texts: Sequence[str]
    label: str


@dataclass
class TrainingSet:
    train: list[Example]
    gallery: list[Example]  # held-out images to retrieve
    queries: list[tuple[str, str]]  # (query text, label of the relevant gallery images)
    description: str = ""


@dataclass(frozen=True)
class TrainingArgs:
    output: str
    source: str = "clip_search.training:registered_catalog"
    model: str = ""  # an open_clip model to fine-tune (with ``pretrained``) ...
    pretrained: str = ""
    config: str = ""  # ... or a JSON model config to train from scratch
    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 40
    seed: int = 0
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """What identifies a training run: the same digest means the cached model is valid."""
        values = {k: v for k, v in asdict(self).items() if k not in ("output", "threads")}
        if self.config:  # the config's content, not where the checkout happens to live
            values["config"] = hashlib.sha256(Path(self.config).read_bytes()).hexdigest()
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


@dataclass
class TrainingResult:
    output: Path
    steps: int
    seconds: float
    final_loss: float
    metrics: dict[str, float]
    cached: bool = False


def load_source(path: str) -> Callable[..., TrainingSet]:
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"--source must look like 'package.module:function', got {path!r}")
    return getattr(importlib.import_module(module), name)


def registered_catalog(seed: int = 0, eval_share: float = 0.1, **kwargs: Any) -> TrainingSet:
    """(image, text) pairs of every registered model's searchable products.

    A share of products is held out: their titles must retrieve their own images.
    """
    from clip_search.imaging import ImageRejected, decode_image
    from clip_search.registry import registry

    examples: list[Example] = []
    for registration in registry:
        queryset = registration.get_queryset().select_related(*registration.related_paths())
        for obj in queryset.iterator(chunk_size=500):
            data = registration.read_image(obj)
            texts = [text for _, text in registration.text_parts(obj) if text]
            if not data or not texts:
                continue
            try:
                image = decode_image(data)
            except ImageRejected:
                continue
            examples.append(Example(image=image, texts=texts, label=f"{registration.label}:{obj.pk}"))
    random.Random(seed).shuffle(examples)
    held = max(1, int(len(examples) * eval_share)) if len(examples) > 10 else 0
    gallery, train = examples[:held], examples[held:]
    return TrainingSet(train=train, gallery=gallery,
                       queries=[(example.texts[0], example.label) for example in gallery],
                       description=f"{len(examples)} registered products")


def _build_model(args: TrainingArgs) -> tuple[torch.nn.Module, Any, Any, dict, dict]:
    """(model in train mode, eval preprocess, tokenizer, model_cfg, preprocess_cfg)."""
    import open_clip

    if args.config:
        config = json.loads(Path(args.config).read_text())
        model_cfg = config.get("model_cfg", config)
        preprocess_cfg = config.get("preprocess_cfg", {})
        name = f"clip-search-train-{hashlib.sha256(json.dumps(model_cfg).encode()).hexdigest()[:8]}"
        open_clip.factory._MODEL_CONFIGS[name] = model_cfg  # open_clip's own registry of configs
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        from clip_search.encoders.loader import EncoderSpec, load_clip

        loaded = load_clip(EncoderSpec(args.model, args.pretrained))
        model, preprocess, tokenizer = loaded.model, loaded.preprocess, loaded.tokenizer
        model_cfg = open_clip.get_model_config(args.model) or {}
        preprocess_cfg = {}
        model.requires_grad_(True)
    visual = getattr(model, "visual", None)
    preprocess_cfg = {
        "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
        **preprocess_cfg,
    }
    return model.train(), preprocess, tokenizer, model_cfg, preprocess_cfg


@torch.inference_mode()
def evaluate(model: torch.nn.Module, preprocess: Any, tokenizer: Any, data: TrainingSet,
             k: int = 5) -> dict[str, float]:
    """Text→image precision@k and hit@k of the queries against the held-out gallery."""
    if not data.gallery or not data.queries:
        return {}
    was_training = model.training
    model.eval()
    pixels = torch.stack([preprocess(example.image) for example in data.gallery])
    images = torch.cat([F.normalize(model.encode_image(chunk), dim=-1) for chunk in pixels.split(256)])
    texts = F.normalize(model.encode_text(tokenizer([q for q, _ in data.queries])), dim=-1)
    top = (texts @ images.T).topk(min(k, len(data.gallery)), dim=1).indices
    labels = [example.label for example in data.gallery]
    hits = np.array([[labels[i] == label for i in row] for row, (_, label) in zip(top.tolist(), data.queries,
                                                                                  strict=True)])
    model.train(was_training)
    return {f"precision@{k}": float(hits.mean()), f"hit@{k}": float(hits.any(axis=1).mean())}


def train(args: TrainingArgs, *, log: Callable[[str], None] = print, force: bool = False) -> TrainingResult:
    """Train, evaluate on the held-out set and write the model; reuse a cached identical run."""
    output = Path(args.output)
    cached = _cached_result(output, args)
    if cached and not force:
        log(f"Cached model at {output} matches these arguments (use --force to retrain).")
        return cached
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    model, preprocess, tokenizer, model_cfg, preprocess_cfg = _build_model(args)
    source = load_source(args.source)
    started = time.monotonic()
    data = source(seed=args.seed, **args.extra)
    if len(data.train) < 2:
        raise ValueError(f"The source gave {len(data.train)} training examples; at least 2 are needed.")
    log(f"Training on {len(data.train)} examples, evaluating on {len(data.queries)} queries "
        f"over {len(data.gallery)} held-out images ({data.description}).")
    pixels = torch.stack([preprocess(example.image) for example in data.train])
    captions = [list(example.texts) for example in data.train]
    labels = [example.label for example in data.train]

    # fused: one kernel over all parameters; the per-tensor loop costs a third of a small step.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(args.warmup, args.steps))
    generator = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    batch_size = min(args.batch_size, len(data.train))
    loss_value = math.nan
    for step in range(1, args.steps + 1):
        index = torch.randperm(len(data.train), generator=generator)[:batch_size]
        images = pixels[index]
        tokens = tokenizer([rng.choice(captions[i]) for i in index.tolist()])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        targets = _soft_targets([labels[i] for i in index.tolist()])
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()
        if step == 1 or step % max(1, args.steps // 10) == 0 or step == args.steps:
            elapsed = time.monotonic() - started
            log(f"step {step}/{args.steps}  loss {loss_value:.3f}  {elapsed:.0f}s")
    metrics = evaluate(model, preprocess, tokenizer, data)
    log("held-out " + "  ".join(f"{name} {value:.3f}" for name, value in metrics.items()))
    seconds = time.monotonic() - started
    _save(output, model, model_cfg, preprocess_cfg, args, metrics, seconds, loss_value)
    log(f"Wrote {output} ({seconds:.0f}s). Use CLIP_SEARCH['MODEL'] = 'local-dir:{output}'.")
    return TrainingResult(output=output, steps=args.steps, seconds=seconds, final_loss=loss_value,
                          metrics=metrics)


def _soft_targets(labels: list[str]) -> torch.Tensor:
    """Rows of the contrastive target: every example with the same label is a positive.

    With one label per product this is the usual identity target; in a catalog with many
    "red mug"s it stops the loss from pushing identical products apart.
    """
    same = torch.tensor([[a == b for b in labels] for a in labels], dtype=torch.float32)
    return same / same.sum(dim=1, keepdim=True)


def _cosine_with_warmup(warmup: int, steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _save(output: Path, model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict,
          args: TrainingArgs, metrics: dict, seconds: float, loss: float) -> None:
    from safetensors.torch import save_file

    output.mkdir(parents=True, exist_ok=True)
    model.eval()
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(output / WEIGHTS_FILE))
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg,
        "clip_search_training": {"args": asdict(args), "digest": args.digest(), "metrics": metrics,
                                 "seconds": round(seconds, 1), "final_loss": loss},
    }
    (output / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def _cached_result(output: Path, args: TrainingArgs) -> TrainingResult | None:
    try:
        config = json.loads((output / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    info = config.get("clip_search_training", {})
    if info.get("digest") != args.digest() or not (output / WEIGHTS_FILE).is_file():
        return None
    return TrainingResult(output=output, steps=args.steps, seconds=info.get("seconds", 0.0),
                          final_loss=info.get("final_loss", math.nan), metrics=info.get("metrics", {}),
                          cached=True)
