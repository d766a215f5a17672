"""The demo catalog as a clip_train source: drawn products, held-out colour × category pairs.

    manage.py clip_train --config shop_demo/catalog/demo_clip.json \
        --source shop_demo.catalog.training:demo_training_set --output .data/models/demo-clip
"""

from __future__ import annotations

from clip_search.training import Example, TrainingArgs, TrainingSet
from shop_demo.catalog.generator import all_pairs, caption, generate_catalog, heldout_pairs

CAPTION_VARIANTS = 6


def query_for(colour: str, category: str) -> str:
    return f"a photo of a {colour} {category}"


def demo_training_set(seed: int = 0, image_size: int = 64, train_size: int = 4000,
                      gallery_per_pair: int = 8) -> TrainingSet:
    """Train on every pair but the held-out ones; retrieve held-out pairs among all pairs."""
    held = heldout_pairs(seed)
    train = [
        Example(image=spec.draw(image_size),
                texts=[caption(spec, variant) for variant in range(CAPTION_VARIANTS)],
                label=f"{spec.colour} {spec.category}")
        for spec in generate_catalog(train_size, seed=seed, exclude_pairs=held)
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
        steps=400, batch_size=64, lr=2e-3, seed=0,
    )
