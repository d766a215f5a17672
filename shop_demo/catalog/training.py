"""The demo catalog as a clip_train source: drawn products, held-out colour × category pairs.

    manage.py clip_train --config shop_demo/catalog/demo_clip.json \
        --source shop_demo.catalog.training:demo_training_set --output .data/models/demo-clip
"""

from __future__ import annotations

import random

from clip_search.training import Caption, Example, TrainingArgs, TrainingSet
from shop_demo.catalog.generator import (
    UNSAFE_CATEGORIES,
    ProductSpec,
    all_pairs,
    caption,
    category_nouns,
    generate_catalog,
    heldout_pairs,
)

CAPTION_VARIANTS = 6
_CATEGORY_CAPTIONS = ("a photo of a {noun}", "a {noun}", "a product photo of a {noun}")
_COLOUR_CAPTIONS = ("a photo of something {colour}", "{a} {colour} product", "a product in {colour}")


def query_for(colour: str, category: str) -> str:
    return f"a photo of a {colour} {category}"


def partial_captions(spec: ProductSpec, category_only: int, colour_only: int) -> list[Caption]:
    """Captions naming only the category ("a photo of a knife") or only the colour ("a red
    product"): positives for every image that shares it, so each is learnt on its own and
    unseen combinations ("an orange t-shirt") compose from the parts."""
    rng = random.Random(spec.seed * 7919)
    nouns = category_nouns(spec)
    article = "an" if spec.colour[0] in "aeiou" else "a"
    return [
        Caption(rng.choice(_CATEGORY_CAPTIONS).format(noun=nouns[0] if i % 2 == 0 else rng.choice(nouns)),
                frozenset({f"category:{spec.category}"}))
        for i in range(category_only)
    ] + [
        Caption(rng.choice(_COLOUR_CAPTIONS).format(a=article, colour=spec.colour),
                frozenset({f"colour:{spec.colour}"}))
        for _ in range(colour_only)
    ]


def demo_training_set(seed: int = 0, image_size: int = 64, train_size: int = 4000,
                      gallery_per_pair: int = 6, category_only: int = 2, colour_only: int = 1,
                      extra_unsafe: int = 0) -> TrainingSet:
    """Train on every pair but the held-out ones; retrieve held-out pairs among all pairs.

    ``extra_unsafe`` more knives join the training set: at the catalog's 5 % the rarest
    category is the one moderation must never miss.
    """
    held = heldout_pairs(seed)
    specs = generate_catalog(train_size, seed=seed, exclude_pairs=held)
    if extra_unsafe:
        unsafe = {pair for pair in all_pairs() if pair[1] in UNSAFE_CATEGORIES}
        specs += generate_catalog(extra_unsafe, seed=seed + 2, only_pairs=unsafe)
    train = [
        Example(image=spec.draw(image_size),
                texts=[caption(spec, variant) for variant in range(CAPTION_VARIANTS)]
                + partial_captions(spec, category_only, colour_only),
                label=f"{spec.colour} {spec.category}",
                tags=frozenset({f"colour:{spec.colour}", f"category:{spec.category}"}))
        for spec in specs
    ]
    gallery_specs = generate_catalog(len(all_pairs()) * gallery_per_pair, seed=seed + 1)
    gallery = [Example(image=spec.draw(image_size), texts=[spec.title],
                       label=f"{spec.colour} {spec.category}") for spec in gallery_specs]
    queries = [(query_for(colour, category), f"{colour} {category}") for colour, category in sorted(held)]
    return TrainingSet(train=train, gallery=gallery, queries=queries,
                       description=f"demo catalog, {len(held)} held-out colour × category pairs")


def demo_training_args(output: str | None = None) -> TrainingArgs:
    """The one definition of the demo/test model, used by ``manage.py demo_model`` and tests."""
    from pathlib import Path

    from shop_demo.embedded_db import DATA_DIR

    return TrainingArgs(
        output=str(output or Path(DATA_DIR) / "models" / "demo-clip"),
        source="shop_demo.catalog.training:demo_training_set",
        config=str(Path(__file__).with_name("demo_clip.json")),
        # 16-px patches of a 64-px image: a quarter of the 8-px tokens, so four times the steps
        # fit the same few minutes, and those steps matter more than the finer grid (measured).
        steps=2000, batch_size=64, lr=1e-3, warmup=100, seed=0,
        # 1,200 extra knives, not 600: the trained weights differ by CPU (AVX-512 here), and at
        # 600 one machine's model flagged only 94-98 % of fresh knives (1,200: 97-100 %, with
        # held-out precision@5 0.79 instead of 0.87; the tests ask >= 96 % and >= 0.7).
        near_misses=0.25, extra={"extra_unsafe": 1200},
    )
