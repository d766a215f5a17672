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
import inspect
import json
import math
import os
import random
import shutil
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


@dataclass(frozen=True)
class Caption:
    """A caption that states only some of what its image shows, e.g. just the category.

    It is a positive for every image in the batch that carries all its ``tags``: "a photo of a
    mug" pulls every mug towards it whatever its colour, which teaches the category apart from
    the colour (and is what zero-shot prompts such as moderation's look like).
    """

    text: str
    tags: frozenset[str]


@dataclass
class Example:
    """One image with its captions (one is drawn per step) and a label for evaluation.

    A plain string caption states the whole ``label``: it is a positive for every image with
    that label. The image also carries ``tags`` for the ``Caption``s that state less.
    """

    image: Image.Image
    texts: Sequence[str | Caption]
    label: str
    tags: frozenset[str] = frozenset()


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
    near_misses: float = 0.0  # share of each batch drawn as near misses of the rest (see _Batches)
    seed: int = 0
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """What identifies a training run: the same digest means the cached model is valid."""
        values = {k: v for k, v in asdict(self).items() if k not in ("output", "threads")}
        if self.config:  # the config's content, not where the checkout happens to live
            values["config"] = _file_digest(self.config)
        # The code too: a change to this loop or to the source retrains instead of reusing.
        values["code"] = [_file_digest(__file__), _file_digest(inspect.getfile(load_source(self.source)))]
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    examples = _catalog_examples()
    random.Random(seed).shuffle(examples)
    held = max(1, int(len(examples) * eval_share)) if len(examples) > 10 else 0
    gallery, train = examples[:held], examples[held:]
    return TrainingSet(train=train, gallery=gallery,
                       queries=[(example.texts[0], example.label) for example in gallery],
                       description=f"{len(examples)} registered products")


# How much less often a shopper looks at result n than at the first (examination ∝ 1 / n^0.7):
# a click low in the list is stronger evidence, and counts up to MAX_CLICK_WEIGHT times.
POSITION_BIAS = 0.7
MAX_CLICK_WEIGHT = 5


def clicked_catalog(seed: int = 0, held_out: float = 0.2, gallery_size: int = 300,
                    **kwargs: Any) -> TrainingSet:
    """The catalog's own (image, text) pairs, plus what shoppers typed before clicking a product
    as more captions of its picture: the search log's text searches with events, but the latest
    ``held_out`` share (by time), which judges the result. A query clicked at position n counts
    n^0.7 times (inverse propensity, up to 5): the first results are clicked more whatever they
    are. The catalog's captions stay in the mix so the model keeps what it knew.
    """
    from clip_search.evaluation import from_log, split_by_time

    examples = {example.label: example for example in _catalog_examples()}
    earlier, later = split_by_time(from_log(), held_out)
    clicks = _click_captions(earlier)
    for label, captions in clicks.items():
        if label in examples:
            example = examples[label]
            example.texts = [*example.texts, *captions]
            example.tags = example.tags | {tag for caption in captions for tag in caption.tags}
    queries = []
    for item in later:  # each held-out search: its query must retrieve its best product's picture
        best = max(item.gains, key=lambda pk: item.gains[pk])
        if f"{item.model}:{best}" in examples:
            queries.append((item.query, f"{item.model}:{best}"))
    rng = random.Random(seed)
    wanted = sorted({label for _, label in queries})
    others = sorted(set(examples) - set(wanted))
    gallery = wanted + rng.sample(others, min(len(others), max(0, gallery_size - len(wanted))))
    train = list(examples.values())
    rng.shuffle(train)
    captions = sum(map(len, clicks.values()))
    return TrainingSet(train=train, gallery=[examples[label] for label in gallery], queries=queries,
                       description=f"{len(examples)} products, {captions} click captions from "
                                   f"{len(earlier)} searches; {len(later)} searches held out")


def _click_captions(judged: Sequence[Any]) -> dict[str, list[Caption]]:
    """Product label → the queries clicked on it, each repeated by its inverse propensity.

    A query's caption is tagged with the query, and so is every product clicked for it: the
    loss then takes all of them as positives of that query (``_positives``), instead of pushing
    apart the products shoppers found equally good for it."""
    from clip_search.models import SearchEvent

    queries = {item.search_id: item for item in judged}
    found: dict[str, list[Caption]] = {}
    for search_id, pk, position in SearchEvent.objects.filter(search_id__in=list(queries)).values_list(
            "search_id", "object_pk", "position"):
        item = queries[str(search_id)]
        weight = min(MAX_CLICK_WEIGHT, max(1, round(position ** POSITION_BIAS)))
        caption = Caption(text=item.query, tags=frozenset({"query:" + " ".join(item.query.lower().split())}))
        found.setdefault(f"{item.model}:{pk}", []).extend([caption] * weight)
    return found


def _catalog_examples() -> list[Example]:
    """Every registered model's storefront products with a picture and a text, as examples."""
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
    return examples


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
        model_cfg, preprocess_cfg = _saved_config(args.model)
        model.requires_grad_(True)
    visual = getattr(model, "visual", None)
    preprocess_cfg = {
        "mean": list(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
        **preprocess_cfg,
    }
    return model.train(), preprocess, tokenizer, model_cfg, preprocess_cfg


def _saved_config(model: str) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of the model being fine-tuned, to write beside its new weights:
    a ``local-dir:`` folder's own (what clip_train wrote; fine-tuning its output again), an
    ``hf-clip:`` folder's mapped onto open_clip's architecture, else open_clip's named config."""
    import open_clip

    from clip_search.weights import HF_CLIP

    if model.startswith("local-dir:"):
        config = json.loads((Path(model.removeprefix("local-dir:")) / CONFIG_FILE).read_text())
        return config.get("model_cfg", config), config.get("preprocess_cfg", {})
    if model.startswith(HF_CLIP):
        from clip_search.encoders import hf_clip

        return hf_clip.inspect(model).model_cfg, {}
    return open_clip.get_model_config(model) or {}, {}


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
    threads = torch.get_num_threads()
    if args.threads:  # for this run only: a test session or a web process keeps its own setting
        torch.set_num_threads(args.threads)
    try:
        return _train(args, output, log)
    finally:
        torch.set_num_threads(threads)


def _train(args: TrainingArgs, output: Path, log: Callable[[str], None]) -> TrainingResult:
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
    captions = [[_as_caption(text, example.label) for text in example.texts] for example in data.train]
    image_tags = [example.tags | {example.label} for example in data.train]

    # fused: one kernel over all parameters; the per-tensor loop costs a third of a small step.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(args.warmup, args.steps))
    batches = _Batches(data.train, min(args.batch_size, len(data.train)), args.near_misses, args.seed)
    rng = random.Random(args.seed)
    loss_value = math.nan
    for step in range(1, args.steps + 1):
        index = batches.next()
        images = pixels[index]
        chosen = [rng.choice(captions[i]) for i in index.tolist()]
        tokens = tokenizer([c.text for c in chosen])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        positives = _positives([image_tags[i] for i in index.tolist()], [c.tags for c in chosen])
        loss = (F.cross_entropy(logits, _rows_sum_to_one(positives))
                + F.cross_entropy(logits.T, _rows_sum_to_one(positives.T))) / 2
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


class _Batches:
    """Random batches, optionally with near misses: for a share of the batch, an example that
    shares a tag with another one in it but not its label (a red chair for a red mug).

    Random batches of a catalog with few tags rarely hold the pairs that differ in one
    attribute only, yet those are what teach the model to tell the attributes apart.
    """

    def __init__(self, examples: Sequence[Example], size: int, near_misses: float, seed: int) -> None:
        self.count, self.size = len(examples), size
        self.generator = torch.Generator().manual_seed(seed)
        self.labels = [example.label for example in examples]
        self.tags = [sorted(example.tags) for example in examples]
        by_tag: dict[str, list[int]] = {}
        for i, tags in enumerate(self.tags):
            for tag in tags:
                by_tag.setdefault(tag, []).append(i)
        self.by_tag = by_tag
        self.extra = min(size // 2, round(size * near_misses)) if by_tag else 0

    def next(self) -> torch.Tensor:
        index = torch.randperm(self.count, generator=self.generator)[:self.size - self.extra].tolist()
        for anchor in index[:self.extra]:
            index.append(self._near_miss(anchor))
        return torch.tensor(index)

    def _near_miss(self, anchor: int) -> int:
        tags = self.tags[anchor] or [None]
        for _ in range(8):  # a tag shared only by the same label has no near miss; give up soon
            tag = tags[self._randint(len(tags))]
            candidates = self.by_tag.get(tag, [])
            if candidates:
                other = candidates[self._randint(len(candidates))]
                if self.labels[other] != self.labels[anchor]:
                    return other
        return self._randint(self.count)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))


def _as_caption(text: str | Caption, label: str) -> Caption:
    return text if isinstance(text, Caption) else Caption(text, frozenset({label}))


def _positives(image_tags: list[frozenset[str]], caption_tags: list[frozenset[str]]) -> torch.Tensor:
    """(images × captions) 1/0: a caption is a positive for every image that has all its tags.

    With one label per product and plain captions this is the usual identity target; in a
    catalog with many "red mug"s it stops the loss from pushing identical products apart.
    """
    return torch.tensor([[wanted <= tags for wanted in caption_tags] for tags in image_tags],
                        dtype=torch.float32)


def _rows_sum_to_one(positives: torch.Tensor) -> torch.Tensor:
    return positives / positives.sum(dim=1, keepdim=True)


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

    # Written beside the target and swapped in whole: a run killed half way never leaves
    # weights and a config that disagree (the config's digest is what marks a valid cache).
    staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.eval()
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(staging / WEIGHTS_FILE))
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg,
        "clip_search_training": {"args": asdict(args), "digest": args.digest(), "metrics": metrics,
                                 "seconds": round(seconds, 1), "final_loss": loss},
    }
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    previous = output.with_name(f".{output.name}.{os.getpid()}.old")
    if output.exists():
        output.rename(previous)
    staging.rename(output)
    shutil.rmtree(previous, ignore_errors=True)


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
