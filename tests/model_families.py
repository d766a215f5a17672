"""Small model folders of the open_clip families a shop picks besides CLIP, built here from random
weights (nothing is downloaded): what ``MODEL = "local-dir:/path"`` reads.

- ``siglip_folder``: ``ViT-B-16-SigLIP``'s design at small widths: a timm ViT image tower pooled
  by attention ("map", timm's own ``test_vit``), a bidirectional text tower pooled at the last of
  its 64 positions with a projection bias, a learned ``logit_bias``, and a SentencePiece-style
  (Unigram) ``tokenizer.json`` that pads with its end token ``</s>`` (id 1), as SigLIP's does.
- ``hf_text_folder``: ``xlm-roberta-base-ViT-B-32``'s design: open_clip's ViT image tower and a
  Hugging Face ``XLMRobertaModel`` text tower, mean-pooled (or ``pooler``), laid out as the README
  says: one folder with the open_clip config and weights, the text model's ``config.json`` (the
  folder names itself in ``hf_model_name``) and an XLM-R-style tokenizer (``<s>`` 0, ``<pad>`` 1,
  ``</s>`` 2).

Every parameter is nudged off its initial value (seeded), so that a zero bias or a unit norm
cannot hide a mistake. Tokenizers are trained on the demo catalog's captions plus a few
translations, so queries are words and not bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

CONTEXT = 64  # SigLIP's


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Nothing may reach the Hugging Face Hub meanwhile (huggingface_hub reads HF_HUB_OFFLINE once,
    at import, so its constant is set too); restored afterwards."""
    import huggingface_hub.constants as hub

    before, os.environ["HF_HUB_OFFLINE"], hub.HF_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE"), "1", True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before == "1"
        os.environ.pop("HF_HUB_OFFLINE") if before is None else os.environ.update(HF_HUB_OFFLINE=before)
EXTRA_TEXTS = ["ein rotes Kleid", "une robe rouge", "un vestido rojo", "赤いドレス", "красное платье",
               "ÜBER-soft cashmere scarf", "Crème brûlée façade"]


def _texts() -> list[str]:
    from shop_demo.catalog.generator import caption, generate_catalog

    specs = generate_catalog(300, seed=3)
    return [caption(spec, variant) for spec in specs for variant in range(3)] + EXTRA_TEXTS


def _unigram(special: list[str], template: str, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    # What transformers 5's T5 / XLM-R classes build, so its tokenizer and ours read one pipeline.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.train_from_iterator(_texts() * 3, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=special, unk_token="<unk>"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, special.index(token)) for token in special
                                         if token in template.split()])
    return tokenizer


def _nudged(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


def _save(folder: Path, model_cfg: dict, preprocess_cfg: dict, name: str, seed: int) -> Path:
    """Build ``model_cfg`` with open_clip (registered under ``name``, as ``clip_train`` does) and
    write the folder ``local-dir:`` reads."""
    import open_clip
    from safetensors.torch import save_file

    open_clip.factory._MODEL_CONFIGS[name] = model_cfg
    torch.manual_seed(seed)
    model = _nudged(open_clip.create_model(name, pretrained_text=False), seed)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=1))
    return folder


def siglip_folder(folder: Path, seed: int = 0, *, gelu: str = "none") -> Path:
    """``gelu="tanh"``: SigLIP 2's text MLP (``act_kwargs``), which the ONNX graph does not rebuild."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _unigram(["<pad>", "</s>", "<unk>"], "$A </s>")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "extra_ids": 0, "model_max_length": CONTEXT}))
    model_cfg = {
        "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": tokenizer.get_vocab_size(),
                     "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
                     "tokenizer_kwargs": {"clean": "canonicalize"},
                     "width": 64, "heads": 4, "layers": 2, "no_causal_mask": True, "proj_bias": True,
                     "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                     **({"act_kwargs": {"approximate": gelu}} if gelu != "none" else {})},
    }
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                      "resize_mode": "squash"}
    return _save(folder, model_cfg, preprocess_cfg, f"test-siglip-{seed}-{gelu}", seed)


def hf_text_folder(folder: Path, *, pooler: str = "mean_pooler", seed: int = 0) -> Path:
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>")
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
        "mask_token": "<mask>", "model_max_length": 512}))
    transformers.XLMRobertaConfig(  # the text model's config.json only: its weights are open_clip's
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    ).save_pretrained(folder)
    model_cfg = {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_pooler_type": pooler,
                     "hf_proj_type": "mlp", "context_length": 32},
    }
    return _save(folder, model_cfg, {}, f"test-hf-text-{pooler}-{seed}", seed)


def reference(clip, texts: list[str]) -> np.ndarray:
    """open_clip's own vectors: ``encode_text`` on the tokenizer's ids, L2-normalised."""
    import torch.nn.functional as F

    with torch.inference_mode():
        return F.normalize(clip.model.encode_text(clip.tokenizer(texts)), dim=-1).numpy()


def indexes_and_searches(folder: Path, clip, settings, tmp_path: Path) -> None:
    """The README's path for a shop: ``clip_reindex --model local-dir:<folder> --activate`` over a
    few drawn products, then search. Stored and query vectors are L2-normalised, of the model's
    dimension and the model's own; a picture finds its own product first; words are encoded for
    the vector leg without degrading the search."""
    from django.core.management import call_command

    from clip_search.encoders import EncoderSpec, ImageEncoder, get_text_encoder, reset
    from clip_search.models import Embedding, EncoderModel
    from clip_search.search import search
    from shop_demo.catalog.generator import generate_catalog
    from shop_demo.catalog.models import Product
    from shop_demo.catalog.training import query_for
    from tests.catalog import create_product, vector_of

    settings.MEDIA_ROOT = tmp_path / "media"
    reset()
    specs = generate_catalog(12, seed=41)
    products = [create_product(spec) for spec in specs]
    call_command("clip_reindex", "--model", f"local-dir:{folder}", "--activate")

    encoder = EncoderModel.objects.get(is_active=True)
    assert encoder.name == f"local-dir:{folder}" and encoder.dimension == clip.dimension
    assert encoder.fingerprint == clip.fingerprint
    expected = ImageEncoder(clip).encode_bytes([p.image.open("rb").read() for p in products])
    for product, result in zip(products, expected, strict=True):
        stored = vector_of(product)
        assert stored.shape == (clip.dimension,) and abs(float(np.linalg.norm(stored)) - 1) < 1e-4
        assert float(stored @ result.vector) == pytest.approx(1.0, abs=1e-4)

    words = query_for(specs[0].colour, specs[0].category)
    query = get_text_encoder(EncoderSpec(encoder.name)).encode_query(words)
    assert query.shape == (clip.dimension,) and abs(float(np.linalg.norm(query)) - 1) < 1e-5
    np.testing.assert_allclose(query, reference(clip, [words])[0], atol=1e-5)

    indexed = set(Embedding.objects.filter(encoder=encoder, status=Embedding.Status.INDEXED)
                  .values_list("object_pk", flat=True))
    assert len(indexed) >= len(products) // 2
    for product in [p for p in products if str(p.pk) in indexed][:3]:
        by_picture = list(search(Product.objects.all(), image=product.image.open("rb").read(), limit=3))
        assert by_picture[0].pk == product.pk
    # Random weights: which vector hits are relevant enough to keep is the search's business;
    # that the words went through this model's text encoder into the vector leg is this test's.
    by_words = search(Product.objects.all(), text=words, limit=5)
    assert list(by_words) and "vector" in by_words.search_info.legs and not by_words.search_info.is_degraded
    reset()
