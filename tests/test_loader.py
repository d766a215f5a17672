"""Loading weights: clear errors, never a silent fallback to random weights."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from django.test import override_settings
from safetensors.torch import load_file, save_file

from clip_search.encoders import EncoderLoadError, EncoderSpec, TextEncoder, load_clip
from clip_search.training import WEIGHTS_FILE

ROOT = Path(__file__).resolve().parent.parent


def load_error(spec: EncoderSpec) -> str:
    with pytest.raises(EncoderLoadError) as error:
        load_clip(spec)
    return str(error.value)


def test_missing_checkpoint_file(tmp_path):
    message = load_error(EncoderSpec("ViT-B-32", str(tmp_path / "nope.pt")))
    assert "neither a checkpoint file nor a known tag" in message and "laion2b_s34b_b79k" in message


def test_corrupt_checkpoint_file(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a checkpoint" * 100)
    message = load_error(EncoderSpec("RN50", str(broken)))
    assert "Could not load CLIP model 'RN50'" in message and "broken.pt" in message


def test_quickgelu_mismatch_is_refused_before_any_download():
    message = load_error(EncoderSpec("ViT-B-32", "openai"))
    assert "ViT-B-32-quickgelu" in message


def test_unknown_model_and_empty_weights():
    assert "Unknown open_clip model" in load_error(EncoderSpec("ViT-Z-99", "x"))
    assert "No weights configured" in load_error(EncoderSpec("ViT-B-32", ""))


def test_local_dir_without_weights_is_an_error_not_random(tmp_path, demo_model_dir):
    shutil.copy(demo_model_dir / "open_clip_config.json", tmp_path)
    assert "no weights file" in load_error(EncoderSpec(f"local-dir:{tmp_path}"))


def test_fingerprint_identifies_the_weights(tmp_path, demo_model_dir, demo_clip):
    text_only = load_clip(EncoderSpec(f"local-dir:{demo_model_dir}"), towers="text")
    assert text_only.fingerprint == demo_clip.fingerprint
    assert text_only.model.visual is None and demo_clip.model.visual is not None
    assert not demo_clip.model.training
    assert all(not p.requires_grad for p in demo_clip.model.parameters())

    shutil.copy(demo_model_dir / "open_clip_config.json", tmp_path)
    state = load_file(str(demo_model_dir / WEIGHTS_FILE))
    state["ln_final.weight"] = state["ln_final.weight"] + 1e-3
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    assert load_clip(EncoderSpec(f"local-dir:{tmp_path}")).fingerprint != demo_clip.fingerprint


def test_demo_vectors_are_l2_normalised(demo_clip):
    texts = TextEncoder(demo_clip).encode(["a red mug", "blue sneaker"])
    assert np.allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    with torch.inference_mode():
        assert texts.dtype == np.float32


# --------------------------------------------------------------------------- what the weights are called


def test_local_dir_ignores_the_default_pretrained_without_a_warning(demo_model_dir, caplog):
    from clip_search.conf import DEFAULTS

    assert DEFAULTS["PRETRAINED"] == "laion2b_s34b_b79k"  # the default a shop inherits
    with override_settings(CLIP_SEARCH={"MODEL": f"local-dir:{demo_model_dir}"}):
        spec = EncoderSpec.from_settings()
    assert spec.pretrained == ""
    assert spec == EncoderSpec(f"local-dir:{demo_model_dir}", "laion2b_s34b_b79k")
    with caplog.at_level(logging.INFO):
        clip = load_clip(spec)
    messages = [(record.levelno, record.name, record.getMessage()) for record in caplog.records]
    assert [message for level, _, message in messages if level >= logging.WARNING] == []
    loaded = [message for _, name, message in messages if name == "clip_search.encoders.loader"]
    assert len(loaded) == 1 and "weights in the folder" in loaded[0]
    assert "laion" not in spec.weights_label and "random" not in spec.weights_label
    assert clip.config["pretrained"] == ""


def test_hf_hub_models_carry_their_own_weights_too():
    spec = EncoderSpec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "laion2b_s34b_b79k")
    assert spec.pretrained == "" and spec.weights_label == "weights from the Hugging Face Hub"


@pytest.mark.parametrize("model, pretrained, label", [
    ("ViT-B-32", "laion2b_s34b_b79k", "laion2b_s34b_b79k"),
    ("ViT-B-32", "random", "random"),
    ("ViT-B-32", "/srv/models/shop-finetune.pt", "shop-finetune.pt"),
    ("ViT-B-32", "models/ours.safetensors", "ours.safetensors"),
    ("ViT-B-32", r"C:\models\ours.bin", "ours.bin"),
    ("local-dir:/srv/models/ours", "", "weights in the folder"),
    # A row written before PRETRAINED stopped applying to local-dir: its tag never loaded.
    ("local-dir:/srv/models/ours", "laion2b_s34b_b79k", "weights in the folder"),
    ("local-dir:/srv/models/ours", "random", "weights in the folder"),
])
def test_weights_are_labelled_by_where_they_come_from(model, pretrained, label):
    from clip_search.models import EncoderModel
    from clip_search.weights import weights_label

    assert weights_label(model, pretrained) == label
    row = EncoderModel(name=model, pretrained=pretrained, fingerprint="0123456789abcdef" * 4, dimension=512)
    assert str(row) == f"{model} / {label} (01234567)"


def test_random_is_said_only_of_the_explicit_sentinel():
    """bench/ and test_encoder_equivalence load ViT-B-32 with PRETRAINED "random"."""
    with override_settings(CLIP_SEARCH={"MODEL": "ViT-B-32", "PRETRAINED": "random"}):
        spec = EncoderSpec.from_settings()
    assert spec.pretrained == "random" and spec.weights_label == "random"
    assert EncoderSpec(f"local-dir:{ROOT}", "random").weights_label == "weights in the folder"
