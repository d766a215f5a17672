"""The demo model must have learnt the drawn catalog well enough for search and moderation.

Measured on fresh draws (seeds training never used) through the encoders and the Moderator the
app runs, so a weaker model, a training change that breaks composition or prompts that stop
matching what the model learnt fail here. No database.
"""

import numpy as np
import pytest

from clip_search.encoders import ImageEncoder, TextEncoder
from clip_search.moderation import Moderator
from shop_demo.catalog.generator import all_pairs, generate_catalog, heldout_pairs
from shop_demo.catalog.training import demo_training_args, query_for


@pytest.fixture(scope="module")
def image_encoder(demo_clip):
    return ImageEncoder(demo_clip)


@pytest.fixture(scope="module")
def text_encoder(demo_clip):
    return TextEncoder(demo_clip)


def embed(specs, image_encoder):
    return image_encoder.encode_images([spec.draw(image_encoder.input_size) for spec in specs])


def test_held_out_colour_category_pairs_are_retrieved(image_encoder, text_encoder):
    """Text→image precision@5 for colour × category pairs that training never showed together:
    the model must compose "orange" and "t-shirt", not recall the pair."""
    gallery = generate_catalog(len(all_pairs()) * 6, seed=12345)
    images = embed(gallery, image_encoder)
    held = sorted(heldout_pairs(demo_training_args().seed))
    queries = text_encoder.encode([query_for(colour, category) for colour, category in held])
    top = np.argsort(-(queries @ images.T), axis=1)[:, :5]
    hits = np.array([[gallery[i].pair == pair for i in row] for row, pair in zip(top, held, strict=True)])
    per_pair = {" ".join(pair): int(row.sum()) for pair, row in zip(held, hits, strict=True)}
    assert hits.mean() >= 0.7, f"precision@5 {hits.mean():.3f}; hits of 5 per pair: {per_pair}"


def test_moderation_flags_knives_and_almost_nothing_else(demo_clip, image_encoder, text_encoder):
    """The demo's own MODERATION settings (prompts and thresholds) with the demo model, over 50
    knives and 300 other products: at least 96 % of knives flagged, at most 1 % of the rest."""
    moderator = Moderator(text_encoder, demo_clip.logit_scale)
    sample = generate_catalog(1000, seed=777)  # one knife in every block of 20
    knives = [spec for spec in sample if spec.is_unsafe]
    others = [spec for spec in sample if not spec.is_unsafe][:300]
    knife_verdicts = moderator.judge(embed(knives, image_encoder))
    other_verdicts = moderator.judge(embed(others, image_encoder))

    missed = [(spec.title, verdict.scores)
              for spec, verdict in zip(knives, knife_verdicts, strict=True) if not verdict.is_flagged]
    flagged = [(spec.title, verdict.scores)
               for spec, verdict in zip(others, other_verdicts, strict=True) if verdict.is_flagged]
    assert len(knives) == 50 and len(missed) <= 2, f"knives not flagged: {missed}"
    assert len(flagged) <= 3, f"{len(flagged)} of {len(others)} safe products flagged: {flagged}"
