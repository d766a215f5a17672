"""SigLIP models: open_clip's own ids without transformers, each text path equal to ``encode_text``,
moderation by sigmoid with the model's bias, and a shop that indexes and searches with one.

The folder (``tests/model_families.siglip_folder``) is ViT-B-16-SigLIP's design at small widths
with random weights; the text paths are also run on the full-size ViT-B-16-SigLIP text tower
(random weights). References: open_clip's ``HFTokenizer`` (through transformers, a test
dependency) for the ids, ``model.encode_text`` for the vectors. Thresholds on L2-normalised
vectors: max abs diff ≤ 1e-5 for fp32 paths; int8 paths (torch and ONNX) are held to the
project's int8 bar (cosine ≥ 0.995, as CLIP's in test_encoder_equivalence.py): an 8-bit weight
cannot be within 1e-5 of fp32.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_search.encoders import EncoderLoadError, EncoderSpec, ImageEncoder, TextEncoder, load_clip
from clip_search.encoders.json_tokenizer import JsonTokenizer
from clip_search.encoders.loader import LoadedClip
from clip_search.encoders.text_tower import BIDIRECTIONAL
from clip_search.moderation import Moderator
from tests.model_families import CONTEXT, hub_offline, indexes_and_searches, reference, siglip_folder

ROOT = Path(__file__).resolve().parent.parent
EXACT = 1e-5
INT8 = 0.995

QUERIES = [
    "dress",
    "a photo of a red dress",
    "Blue Leather handbag, with a GOLD chain!",
    "ÜBER-soft  cashmere scarf — 100% wool",
    "it’s “quoted” ﬁne",
    "",
    "</s> <pad> typed by a shopper",
    "very long query " + " ".join(f"word{i}" for i in range(120)),  # cut to 64 tokens
]
PATHS = {
    "torch": {},
    "torch-int8": {"quantize": True},
    "onnx": {"backend": "onnx"},
    "onnx-int8": {"backend": "onnx", "quantize": True},
}


@pytest.fixture(scope="module", autouse=True)
def offline():
    with hub_offline():
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return siglip_folder(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def siglip(folder) -> LoadedClip:
    return load_clip(EncoderSpec(f"local-dir:{folder}"))


@pytest.fixture(scope="module")
def full_size(folder) -> LoadedClip:
    """ViT-B-16-SigLIP's text tower at full size (12 layers, 768 wide, 64 positions), random."""
    import open_clip

    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-16-SigLIP").eval().requires_grad_(False)
    model.visual = None
    tokenizer = JsonTokenizer(folder, context_length=CONTEXT, clean="canonicalize")
    return LoadedClip(spec=EncoderSpec("ViT-B-16-SigLIP", "random"), model=model, preprocess=None,
                      tokenizer=tokenizer, fingerprint="", dimension=768, towers="text")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# --------------------------------------------------------------------------- loading


def test_the_folder_loads_as_a_siglip_model(siglip, folder):
    import open_clip

    assert type(siglip.model).__name__ == "CustomTextCLIP"
    assert type(siglip.model.visual).__name__ == "TimmModel"
    assert siglip.dimension == 64 and siglip.logit_bias == pytest.approx(float(siglip.model.logit_bias))
    assert isinstance(siglip.tokenizer, JsonTokenizer)
    assert siglip.tokenizer.context_length == CONTEXT and siglip.tokenizer.pad_token_id == 1
    # The same ids as open_clip's own tokenizer (transformers' AutoTokenizer over the folder).
    theirs = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert torch.equal(siglip.tokenizer(QUERIES), theirs(QUERIES))
    ids = siglip.tokenizer(["a red dress"])[0]
    assert int(ids[-1]) == 1 and int((ids != 1).sum()) > 1  # padded with </s>, after the words


def test_siglip_runs_without_transformers(folder):
    """A process where transformers cannot be imported loads, embeds text and images, moderates."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["transformers"] = None  # import transformers -> ImportError
        import django, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "shop_demo.settings"
        django.setup()
        from PIL import Image
        from clip_search.encoders import EncoderSpec, ImageEncoder, TextEncoder, load_clip
        from clip_search.moderation import Moderator
        clip = load_clip(EncoderSpec("local-dir:{folder}"))
        text = TextEncoder(clip).encode(["a red dress"])
        image = ImageEncoder(clip).encode_images([Image.new("RGB", (200, 120), (200, 30, 30))])
        verdict = Moderator(TextEncoder(clip), clip.logit_scale).judge(image)[0]
        assert "transformers" not in {{name.split(".")[0] for name in sys.modules if sys.modules[name]}}
        print(text.shape, image.shape, sorted(verdict.scores))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("(1, 64) (1, 64) ['weapons']")


def test_a_tokenizer_offline_and_not_cached_is_a_clear_error():
    """ViT-B-16-SigLIP by name: its tokenizer is a Hub repository, not in this machine's cache."""
    with pytest.raises(EncoderLoadError, match="timm/ViT-B-16-SigLIP.*local-dir"):
        load_clip(EncoderSpec("ViT-B-16-SigLIP", "random"), towers="text")


def test_a_folder_without_its_tokenizer_is_refused(folder, tmp_path):
    import shutil

    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(EncoderLoadError, match="no tokenizer.json"):
        load_clip(EncoderSpec(f"local-dir:{broken}"))


# --------------------------------------------------------------------------- text paths


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("size", ["small", "full"])
def test_every_text_path_gives_encode_texts_vectors(siglip, full_size, size, path):
    clip = siglip if size == "small" else full_size
    if PATHS[path].get("backend") == "onnx":
        pytest.importorskip("onnxruntime")
    encoder = TextEncoder(clip, cache_size=0, **PATHS[path])
    assert encoder.tower.family == BIDIRECTIONAL and not encoder.tower.causal
    assert encoder.backend == PATHS[path].get("backend", "torch")
    assert encoder.quantized == bool(PATHS[path].get("quantize"))
    expected = reference(clip, QUERIES)
    batch = encoder.encode(QUERIES)
    alone = np.stack([encoder.encode([query])[0] for query in QUERIES])
    assert batch.shape == (len(QUERIES), clip.dimension) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    diff = max(float(np.abs(batch - expected).max()), float(np.abs(alone - expected).max()))
    cosine = min(cosines(batch, expected).min(), cosines(alone, expected).min())
    print(f"SigLIP {size} {path}: max abs diff {diff:.2e}, min cosine {cosine:.6f}")
    if "int8" in path:
        assert cosine >= INT8
    else:
        assert diff <= EXACT


def test_siglip2s_tanh_gelu_runs_torch_where_onnx_cannot_rebuild_it(tmp_path, caplog):
    clip = load_clip(EncoderSpec(f"local-dir:{siglip_folder(tmp_path / 'siglip2', seed=3, gelu='tanh')}"))
    expected = reference(clip, QUERIES)
    pytest.importorskip("onnxruntime")
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        onnx = TextEncoder(clip, cache_size=0, backend="onnx")
    assert onnx.backend == "torch" and "unsupported MLP activation" in caplog.text
    assert float(np.abs(onnx.encode(QUERIES) - expected).max()) <= EXACT
    assert cosines(TextEncoder(clip, cache_size=0, quantize=True).encode(QUERIES), expected).min() >= INT8


def test_without_tokenizers_a_siglip_model_is_a_clear_error(folder):
    """A base install: neither tokenizers nor transformers (which requires it)."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tokenizers"] = sys.modules["transformers"] = None  # as far as this process can tell
        from clip_search.encoders import EncoderLoadError, EncoderSpec, load_clip
        try:
            load_clip(EncoderSpec("local-dir:{folder}"))
        except EncoderLoadError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenizers package, which is not installed" in result.stdout
    assert "pip install 'clip-search[siglip]'" in result.stdout


def test_cutting_a_siglip_query_after_its_end_token_would_be_wrong(siglip):
    """Why SigLIP never takes CLIP's shortcut: its pooled (last) position sees the padding."""
    tokens = siglip.tokenizer(["a photo of a red dress"])
    end = int((tokens[0] != 1).nonzero().max()) + 1  # the end token </s> (= padding) follows
    text = siglip.model.text
    with torch.inference_mode():
        full = F.normalize(text(tokens), dim=-1)
        cut = F.normalize(text.text_projection(text.ln_final(text.transformer(
            text.token_embedding(tokens[:, :end + 1]) + text.positional_embedding[:end + 1]))[:, -1]), dim=-1)
    assert float((full - cut).abs().max()) > 1e-2


def test_a_truncated_query_is_reported(siglip, caplog):
    encoder = TextEncoder(siglip, cache_size=0)
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        encoder.encode(QUERIES[:-1])
    assert "truncated" not in caplog.text  # padded with </s> and ending with it, yet whole
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        encoder.encode(QUERIES[-1:])
    assert "truncated to 64 tokens" in caplog.text


# --------------------------------------------------------------------------- moderation


def test_moderation_scores_each_category_with_sigmoid_and_the_models_bias(siglip, folder):
    clip = load_clip(EncoderSpec(f"local-dir:{folder}"))  # its own copy: the bias is changed below
    options = {"ENABLED": True, "SAMPLE_RATE": 0.0, "SAFE_PROMPTS": ["a product photo"],
               "CATEGORIES": {"weapons": {"PROMPTS": ["a photo of a knife", "a blade"], "THRESHOLD": 0.5},
                              "other": {"PROMPTS": ["a photo of a red dress"], "THRESHOLD": 0.5}}}
    images = ImageEncoder(clip).encode_images(_pictures())
    text = TextEncoder(clip, cache_size=0)
    weapons = text.encode(options["CATEGORIES"]["weapons"]["PROMPTS"]).mean(axis=0)
    weapons /= np.linalg.norm(weapons)
    for bias in (-30.0, -2.0, 30.0):
        clip.model.logit_bias.data.fill_(bias)
        moderator = Moderator(text, clip.logit_scale, options)
        assert moderator.logit_bias == pytest.approx(bias)
        verdicts = moderator.judge(images)
        for vector, verdict in zip(images, verdicts, strict=True):
            expected = 1 / (1 + math.exp(-(clip.logit_scale * float(vector @ weapons) + bias)))
            assert verdict.scores["weapons"] == pytest.approx(expected, rel=1e-3)
            assert verdict.flagged == [name for name, p in verdict.scores.items() if p >= 0.5]
        if bias == -30.0:
            assert not any(v.flagged for v in verdicts)
        if bias == 30.0:  # each category on its own: no softmax shares 1 between them
            assert all(v.flagged == ["weapons", "other"] for v in verdicts)


def test_clips_moderation_is_still_the_softmax(demo_clip):
    """A model without a logit bias: a softmax over safe prompts and categories, as before."""
    assert demo_clip.logit_bias is None
    options = {"ENABLED": True, "SAMPLE_RATE": 0.0, "SAFE_PROMPTS": ["a product photo", "a photo of a mug"],
               "CATEGORIES": {"weapons": {"PROMPTS": ["a photo of a knife"], "THRESHOLD": 0.5}}}
    text = TextEncoder(demo_clip, cache_size=0)
    moderator = Moderator(text, demo_clip.logit_scale, options)
    images = ImageEncoder(demo_clip).encode_images(_pictures())
    classes = text.encode(["a product photo", "a photo of a mug", "a photo of a knife"])
    logits = demo_clip.logit_scale * images.astype(np.float64) @ classes.T.astype(np.float64)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    got = [verdict.scores["weapons"] for verdict in moderator.judge(images)]
    np.testing.assert_allclose(got, softmax[:, 2], rtol=1e-3)


def _pictures():
    from shop_demo.catalog.generator import generate_catalog

    return [spec.draw(160) for spec in generate_catalog(4, seed=8)]


# --------------------------------------------------------------------------- a shop uses it


@pytest.mark.django_db
def test_a_shop_indexes_and_searches_with_a_siglip_model(folder, siglip, settings, tmp_path):
    """``clip_reindex --model local-dir:<siglip> --activate``, then search by words and by picture."""
    indexes_and_searches(folder, siglip, settings, tmp_path)
