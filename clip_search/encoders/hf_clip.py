"""Hugging Face ``transformers`` CLIP folders (``MODEL = "hf-clip:/path"``) on open_clip's CLIP.

A folder is what ``CLIPModel.save_pretrained`` and ``CLIPProcessor.save_pretrained`` write (or
``hf download`` fetches): ``config.json``, the weights (``model.safetensors``, or
``pytorch_model.bin``, possibly sharded with an index), the tokenizer and the image processor
config. The text and vision towers of a transformers CLIP are open_clip's ``CLIP`` with other
parameter names (ViT-B/32, B/16, L/14 and any other width, depth, patch size, GELU or QuickGELU),
so the architecture is built from config.json and the weights are renamed onto it: the
rest of clip_search (fast text path, ONNX, int8, towers, fingerprint) then works on it as on
any open_clip model. transformers itself is never imported: JSON, safetensors and
``torch.load(weights_only=True)`` read everything (it is a test dependency only, to check
that the vectors are the ones transformers computes).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clip_search.encoders.hf_preprocess import PreprocessConfigError, image_processor_config, image_transform
from clip_search.encoders.hf_tokenizer import TokenizerFilesError, load_tokenizer, tokenizer_files
from clip_search.encoders.loader import EncoderLoadError
from clip_search.weights import HF_CLIP

# CLIPTextConfig's / CLIPVisionConfig's / CLIPConfig's defaults, for the keys a config.json
# written with transformers' diff-only serialisation leaves out.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "eos_token_id": 49407,
}
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
PROJECTION_DIM = 512
ACTIVATIONS = ("quick_gelu", "gelu")  # transformers' names: QuickGELU and exact (erf) GELU
# The legacy ``eos_token_id`` of configs written before transformers pooled at the first end
# token: those pool at the highest id instead, as open_clip's "argmax" does.
LEGACY_EOS_ID = 2

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# transformers name → open_clip name, outside the residual blocks.
RENAMED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
# nn.Linear(width, dim, bias=False) weights; open_clip keeps the (width, dim) matrix.
TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
TOWERS = {"text_model": "transformer.resblocks", "vision_model": "visual.transformer.resblocks"}
BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
          "self_attn.out_proj": "attn.out_proj"}
_BLOCK_KEY = re.compile(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@dataclass(frozen=True)
class HfClipFolder:
    """What a folder declares, read without its weights (cheap: for system checks too)."""

    path: Path
    model_cfg: dict[str, Any]
    weight_files: list[Path]
    preprocess: Any  # the torchvision transform of its image processor config


@contextlib.contextmanager
def _errors_naming(model: str) -> Iterator[None]:
    """Any problem of the folder, raised as an ``EncoderLoadError`` that names the model."""
    try:
        yield
    except (EncoderLoadError, TokenizerFilesError, PreprocessConfigError) as error:
        raise EncoderLoadError(f"{model!r}: {error}.") from error


def inspect(model: str) -> HfClipFolder:
    """Check the folder's files and settings (not the weights themselves)."""
    with _errors_naming(model):
        return _inspect(Path(model.removeprefix(HF_CLIP)).expanduser())


def _inspect(folder: Path) -> HfClipFolder:
    if not folder.is_dir():
        raise EncoderLoadError(f"{str(folder)!r} is not a folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EncoderLoadError(f"no config.json in {str(folder)!r}") from None
    except (OSError, ValueError) as error:
        raise EncoderLoadError(f"config.json cannot be read ({error})") from error
    model_cfg = open_clip_config(config)
    tokenizer_files(folder)
    preprocess = image_transform(image_processor_config(folder), model_cfg["vision_cfg"]["image_size"])
    return HfClipFolder(folder, model_cfg, _weight_files(folder), preprocess)


def open_clip_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip's ``model_cfg`` for a transformers ``CLIPConfig`` dict (config.json)."""
    kind = config.get("model_type") if isinstance(config, Mapping) else None
    if kind != "clip":
        raise EncoderLoadError(f"config.json is not a transformers CLIP model (model_type {kind!r}; "
                               "SigLIP and other families are not hf-clip: models)")
    text = _tower(config, "text_config", TEXT_DEFAULTS)
    vision = _tower(config, "vision_config", VISION_DEFAULTS)
    activations = {text["hidden_act"], vision["hidden_act"]}
    if len(activations) != 1 or not activations <= set(ACTIVATIONS):
        raise EncoderLoadError(f"hidden_act {text['hidden_act']!r} (text) / {vision['hidden_act']!r} "
                               f"(vision) is not supported: both towers must use one of {ACTIVATIONS}")
    if vision["num_channels"] != 3:
        raise EncoderLoadError(f"num_channels {vision['num_channels']} (RGB models only)")
    eos_id = text["eos_token_id"]
    return {
        "embed_dim": _positive_int(config.get("projection_dim", PROJECTION_DIM), "projection_dim"),
        "quick_gelu": activations == {"quick_gelu"},
        "vision_cfg": {
            "image_size": vision["image_size"], "patch_size": vision["patch_size"],
            "width": vision["hidden_size"], "layers": vision["num_hidden_layers"],
            "head_width": vision["hidden_size"] // vision["num_attention_heads"],
            "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"],
            "norm_kwargs": {"eps": vision["layer_norm_eps"]},
        },
        "text_cfg": {
            "context_length": text["max_position_embeddings"], "vocab_size": text["vocab_size"],
            "width": text["hidden_size"], "heads": text["num_attention_heads"],
            "layers": text["num_hidden_layers"], "mlp_ratio": text["intermediate_size"] / text["hidden_size"],
            "norm_kwargs": {"eps": text["layer_norm_eps"]},
            # transformers pools at the first end token, or at the highest id for legacy configs.
            "pool_type": "argmax" if eos_id == LEGACY_EOS_ID else "eos", "eos_id": eos_id,
        },
    }


def _tower(config: Mapping[str, Any], key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A tower's settings: the defaults, then ``text_config`` (or ``vision_config``), then the
    legacy ``*_config_dict`` that transformers lets override it."""
    given = [config.get(key) or {}, config.get(f"{key}_dict") or {}]
    if not all(isinstance(part, Mapping) for part in given):
        raise EncoderLoadError(f"config.json's {key} is not an object")
    tower = {**defaults, **given[0], **given[1]}
    for name in defaults:
        if name not in ("hidden_act", "layer_norm_eps"):
            _positive_int(tower[name], f"{key}.{name}")
    eps = tower["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise EncoderLoadError(f"config.json's {key}.layer_norm_eps {eps!r} is not a positive number")
    if tower["hidden_size"] % tower["num_attention_heads"]:
        raise EncoderLoadError(f"{key}.hidden_size {tower['hidden_size']} is not a multiple of "
                               f"num_attention_heads {tower['num_attention_heads']}")
    return tower


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EncoderLoadError(f"config.json's {name} {value!r} is not a positive integer")
    return value


def _weight_files(folder: Path) -> list[Path]:
    """The weights file, or the shards a ``*.index.json`` lists."""
    name = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if name is None:
        raise EncoderLoadError(f"no weights file ({', '.join(WEIGHT_FILES)}) in {str(folder)!r}")
    if not name.endswith(".index.json"):
        return [folder / name]
    try:
        shards = sorted(set(json.loads((folder / name).read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise EncoderLoadError(f"{name} cannot be read ({error})") from error
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise EncoderLoadError(f"{name} lists {missing[0]!r}, which is not in the folder")
    return [folder / shard for shard in shards]


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """The tensors of the weights files, on the CPU."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                state.update(load_file(str(path)))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # a truncated or foreign file fails with any reader error
            raise EncoderLoadError(f"{path.name} cannot be read ({error})") from error
    return state


def open_clip_state_dict(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPModel weights under open_clip's names: q/k/v projections concatenated
    into ``in_proj``, the projections transposed, everything else renamed."""
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}
    unknown = []
    for name, tensor in weights.items():
        block = _BLOCK_KEY.fullmatch(name)
        if name in RENAMED:
            state[RENAMED[name]] = tensor
        elif name in TRANSPOSED:
            state[TRANSPOSED[name]] = tensor.T.contiguous()
        elif name.endswith(".position_ids"):
            continue  # a buffer older transformers saved; open_clip recomputes positions
        elif block and block[3] in BLOCK:
            tower, layer, module, kind = block.groups()
            state[f"{TOWERS[tower]}.{layer}.{BLOCK[module]}.{kind}"] = tensor
        elif block and block[3] in QKV:
            tower, layer, module, kind = block.groups()
            qkv.setdefault((tower, layer, kind), {})[module] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise EncoderLoadError(f"the weights hold {len(unknown)} tensors a CLIPModel does not have, "
                               f"e.g. {unknown[0]!r}")
    for (tower, layer, kind), parts in qkv.items():
        if len(parts) != 3:
            missing = next(module for module in QKV if module not in parts)
            raise EncoderLoadError(f"{tower}.encoder.layers.{layer}.{missing}.{kind} is missing")
        state[f"{TOWERS[tower]}.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[m] for m in QKV])
    return state


def load(model: str, *, precision: str = "fp32", device: str = "cpu") -> tuple[torch.nn.Module, Any, Any]:
    """``(open_clip CLIP with the folder's weights, its preprocessing, its tokenizer)``, like
    ``open_clip.create_model_and_transforms`` + ``get_tokenizer`` give for a named model."""
    import open_clip

    folder = inspect(model)
    cast_dtype = open_clip.get_cast_dtype(precision)
    with _errors_naming(model):
        clip = open_clip.CLIP(**folder.model_cfg, cast_dtype=cast_dtype)
        state = open_clip_state_dict(read_weights(folder.weight_files))
        try:
            clip.load_state_dict(state, strict=True)
        except RuntimeError as error:  # missing tensors, or shapes that are not config.json's
            raise EncoderLoadError(f"the weights do not fit config.json: {_gist(error)}") from error
        tokenizer = load_tokenizer(folder.path, folder.model_cfg["text_cfg"]["context_length"])
    clip.to(device=device)
    if cast_dtype is not None:
        open_clip.convert_weights_to_lp(clip, dtype=cast_dtype)
    return clip, folder.preprocess, tokenizer


def _gist(error: Exception, lines: int = 3, width: int = 300) -> str:
    """The first lines of ``load_state_dict``'s error, which lists every tensor (hundreds when a
    folder's config.json belongs to another model size)."""
    text = str(error).splitlines()
    gist = [line.strip()[:width] for line in text[:lines]]
    return " ".join(gist) + (f" … ({len(text) - lines} more)" if len(text) > lines else "")
