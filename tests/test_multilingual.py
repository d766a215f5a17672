"""open_clip models with a Hugging Face text tower (``xlm-roberta-base-ViT-B-32``'s design):
loaded from a local folder offline, each text path equal to ``encode_text``, transformers'
absence a clear error and a system check, and a shop that indexes and searches with one.

The folder (``tests/model_families.hf_text_folder``) holds a random ``XLMRobertaModel`` (2 layers,
64 wide) saved by transformers, named by path in ``hf_model_name``, and its tokenizer files.
Threshold: max abs diff ≤ 1e-5 on L2-normalised vectors against ``model.encode_text`` on the
tokenizer's full, padded ids. The int8 and ONNX backends are not rebuilt for these towers: asked
for, they run the tower's own fp32 forward and say so in the log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clip_search.encoders import EncoderLoadError, EncoderSpec, TextEncoder, load_clip
from clip_search.encoders.text_tower import HF
from tests.model_families import hf_text_folder, hub_offline, indexes_and_searches, reference

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
EXACT = 1e-5

QUERIES = [
    "dress",
    "a photo of a red dress",
    "ein rotes Kleid für den Sommer",
    "une robe rouge",
    "赤いドレス",
    "красное платье",
    "",
    "<pad> </s> typed by a shopper",
    "very long query " + " ".join(f"word{i}" for i in range(60)),  # cut to 32 tokens
]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with hub_offline():
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return hf_text_folder(tmp_path_factory.mktemp("xlmr"))


@pytest.fixture(scope="module")
def multilingual(folder):
    return load_clip(EncoderSpec(f"local-dir:{folder}"))


def test_the_folder_loads_with_its_tokenizer_offline(multilingual, folder):
    model = multilingual.model
    assert type(model.text).__name__ == "HFTextEncoder"
    assert type(model.text.transformer).__name__ == "XLMRobertaModel"
    assert multilingual.dimension == 48 and multilingual.logit_bias is None
    ids = multilingual.tokenizer(["ein rotes Kleid"])[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)  # the folder's own files
    expected = tokenizer(["ein rotes Kleid"], max_length=32, padding="max_length",
                         truncation=True).input_ids[0]
    assert ids.tolist() == expected  # <s> … </s> <pad> …
    assert ids[0] == 0 and 2 in ids.tolist() and ids[-1] == 1


@pytest.mark.parametrize("pooler", ["mean_pooler", "cls_pooler"])
def test_the_text_encoder_gives_encode_texts_vectors(multilingual, tmp_path, pooler):
    clip = multilingual if pooler == "mean_pooler" else load_clip(EncoderSpec(
        f"local-dir:{hf_text_folder(tmp_path / pooler, pooler=pooler, seed=2)}"))
    encoder = TextEncoder(clip, cache_size=0)
    assert encoder.tower.family == HF and not encoder.tower.rebuilt
    expected = reference(clip, QUERIES)
    batch = encoder.encode(QUERIES)
    alone = np.stack([encoder.encode([query])[0] for query in QUERIES])
    assert batch.shape == (len(QUERIES), 48) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    diff = max(float(np.abs(batch - expected).max()), float(np.abs(alone - expected).max()))
    print(f"HF text tower ({pooler}) torch: max abs diff {diff:.2e}")
    assert diff <= EXACT
    # Alone, a short query runs without the padding columns: fewer positions, same vector.
    assert encoder.tower.unpadded(clip.tokenizer(["dress"])).shape[1] < clip.tokenizer.context_length


def test_padding_is_dropped_only_where_the_pooler_never_reads_it(multilingual):
    """open_clip's MaxPooler fills the *unmasked* positions: padding would decide its result, so
    such a tower is left to ``encode_text`` on every column (in open_clip 3.3 that fails on its
    own, on the mask's dtype: the same error then, never another vector)."""
    from open_clip.hf_model import MaxPooler

    from clip_search.encoders.text_tower import EXACT as EXACT_FAMILY
    from clip_search.encoders.text_tower import describe

    text = multilingual.model.text
    mean_pooler, text.pooler = text.pooler, MaxPooler()
    try:
        tower = describe(multilingual.model)
        assert tower.family == EXACT_FAMILY and "MaxPooler" in tower.reason and not tower.rebuilt
        encoder = TextEncoder(multilingual, cache_size=0)
        assert encoder.tower == tower
        for run in (lambda: reference(multilingual, QUERIES[:3]), lambda: encoder.encode(QUERIES[:3])):
            with pytest.raises(RuntimeError, match="masked_fill"):
                run()
    finally:
        text.pooler = mean_pooler


@pytest.mark.parametrize("kwargs", [{"quantize": True}, {"backend": "onnx"},
                                    {"backend": "onnx", "quantize": True}])
def test_int8_and_onnx_fall_back_to_the_exact_path_with_a_reason(multilingual, kwargs, caplog):
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        encoder = TextEncoder(multilingual, cache_size=0, **kwargs)
    assert encoder.backend == "torch" and not encoder.quantized
    assert "Hugging Face text tower" in caplog.text and "own fp32 forward" in caplog.text
    assert float(np.abs(encoder.encode(QUERIES) - reference(multilingual, QUERIES)).max()) <= EXACT


def test_a_truncated_query_is_reported_and_a_short_one_is_not(multilingual, caplog):
    encoder = TextEncoder(multilingual, cache_size=0)
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        encoder.encode(QUERIES[:-1])
    assert "truncated" not in caplog.text  # padded with <pad> (id 1), not open_clip's 0
    with caplog.at_level(logging.WARNING, logger="clip_search.encoders.text"):
        encoder.encode(QUERIES[-1:])
    assert "truncated to 32 tokens" in caplog.text


def test_without_transformers_the_model_is_a_clear_error_and_a_system_check(folder):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["transformers"] = None  # not installed, as far as this process can tell
        import django, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "shop_demo.settings"
        django.setup()
        from django.test import override_settings
        from clip_search.checks import check_model_files
        from clip_search.encoders import EncoderLoadError, EncoderSpec, load_clip
        try:
            load_clip(EncoderSpec("local-dir:{folder}"))
        except EncoderLoadError as error:
            print("load:", error)
        with override_settings(CLIP_SEARCH={{"MODEL": "local-dir:{folder}"}}):
            [error] = check_model_files()
        print("check:", error.id, error.msg)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    load, check = result.stdout.strip().splitlines()[-2:]
    assert load.startswith("load: ") and "transformers, which is not installed" in load
    assert "pip install 'clip-search[multilingual]'" in load
    assert check.startswith("check: clip_search.E006") and "clip-search[multilingual]" in check


def test_a_text_tower_folder_without_its_config_is_refused(folder, tmp_path):
    import json
    import shutil

    broken = shutil.copytree(folder, tmp_path / "broken")
    config = json.loads((broken / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_model_name"] = str(tmp_path / "nowhere")
    (broken / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderLoadError, match="nowhere.*has no config.json"):
        load_clip(EncoderSpec(f"local-dir:{broken}"))


@pytest.mark.django_db
def test_a_shop_indexes_and_searches_with_a_multilingual_model(folder, multilingual, settings, tmp_path):
    """``clip_reindex --model local-dir:<folder> --activate``, then search by words and by picture."""
    from clip_search.encoders import get_text_encoder

    indexes_and_searches(folder, multilingual, settings, tmp_path)
    # A German query through the search's own encoder (its cache key is lower-cased).
    vector = get_text_encoder(EncoderSpec(f"local-dir:{folder}")).encode_query("ein rotes Kleid")
    assert float(np.abs(vector - reference(multilingual, ["ein rotes kleid"])[0]).max()) <= EXACT
