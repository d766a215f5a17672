"""Loading weights: clear errors, never a silent fallback to random weights."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from clip_search.encoders import EncoderLoadError, EncoderSpec, TextEncoder, load_clip
from clip_search.training import WEIGHTS_FILE


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
