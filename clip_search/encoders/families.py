"""What an open_clip model's config says it needs at run time, read before the model is built.

- A **Hugging Face text tower** (``text_cfg.hf_model_name``, e.g. ``xlm-roberta-base-ViT-B-32``:
  multilingual queries) *is* a ``transformers`` model: it needs transformers at run time (the
  ``multilingual`` extra), the text model's ``config.json`` (a local folder, or a Hub id already
  in the Hugging Face cache when offline) and its tokenizer files, which open_clip reads through
  transformers as well.
- A tower of open_clip's own with a Hugging Face tokenizer (``text_cfg.hf_tokenizer_name``
  without ``hf_model_name``: SigLIP) needs only that tokenizer's files, run by ``tokenizers``
  (the ``siglip`` extra, ``json_tokenizer.JsonTokenizer``), never transformers.
- Anything else tokenizes with open_clip's bundled CLIP BPE.

Tokenizer files come from where open_clip takes them: a ``local-dir:`` folder itself, else the
``hf_tokenizer_name`` (a local folder, or a Hub repository: downloaded, or read from the cache).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from clip_search.weights import HF_CLIP, RANDOM

HF_TEXT_EXTRA = "pip install 'clip-search[multilingual]'"
TOKENIZERS_EXTRA = "pip install 'clip-search[siglip]'"


def model_config(model: str) -> dict[str, Any]:
    """The open_clip ``model_cfg`` of a built-in name, a ``local-dir:`` folder or an ``hf-hub:``
    repository ({} when there is none to read, e.g. an ``hf-clip:`` folder or an unknown name)."""
    import open_clip

    if model.startswith(HF_CLIP):
        return {}
    if model.startswith("local-dir:"):
        path = Path(model.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
        return _read_model_cfg(path) if path.is_file() else {}
    if model.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(model.removeprefix("hf-hub:"), "open_clip_config.json")
            return _read_model_cfg(Path(path))
        except Exception:  # offline and not cached, or no such file: open_clip reports it when loading
            return {}
    return open_clip.get_model_config(model.replace("/", "-")) or {}


def _read_model_cfg(path: Path) -> dict[str, Any]:
    from clip_search.encoders.loader import EncoderLoadError

    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("model_cfg") or {})
    except (OSError, ValueError, AttributeError) as error:
        raise EncoderLoadError(f"{str(path)!r} is not a readable open_clip config: {error}") from error


def text_config(model: str) -> dict[str, Any]:
    return dict(model_config(model).get("text_cfg") or {})


def uses_json_tokenizer(text_cfg: dict[str, Any]) -> bool:
    """open_clip's own text tower with a Hugging Face tokenizer in the plain mode (SigLIP)."""
    return bool(text_cfg.get("hf_tokenizer_name")) and not text_cfg.get("hf_model_name") \
        and not text_cfg.get("tokenizer_mode")


def check_requirements(model: str, pretrained: str = "") -> None:
    """Raise ``EncoderLoadError`` for what this family needs and this process lacks (run by
    ``validate_spec``, so ``manage.py check`` reports it as clip_search.E006)."""
    from clip_search.encoders.loader import EncoderLoadError

    text_cfg = text_config(model)
    hf_model = text_cfg.get("hf_model_name")
    if hf_model:
        if importlib.util.find_spec("transformers") is None:
            raise EncoderLoadError(
                f"{model!r} has a Hugging Face text tower ({hf_model!r}): it runs on transformers, "
                f"which is not installed. {HF_TEXT_EXTRA}.")
        path = Path(hf_model).expanduser()
        if path.is_absolute() or path.exists():
            if not (path / "config.json").is_file():
                raise EncoderLoadError(f"{model!r}: its text tower's folder {hf_model!r} has no config.json.")
            if pretrained == RANDOM and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
                raise EncoderLoadError(f"{model!r}: its text tower's folder {hf_model!r} has no weights.")
    elif uses_json_tokenizer(text_cfg) and importlib.util.find_spec("tokenizers") is None:
        raise EncoderLoadError(
            f"{model!r} tokenizes with a Hugging Face tokenizer ({text_cfg['hf_tokenizer_name']!r}), "
            f"run by the tokenizers package, which is not installed. {TOKENIZERS_EXTRA}.")


def tokenizer_for(model: str) -> Any:
    """The tokenizer open_clip would give ``model``, without transformers where it is not needed."""
    import open_clip

    from clip_search.encoders.json_tokenizer import JsonTokenizer, TokenizerFilesError
    from clip_search.encoders.loader import EncoderLoadError

    text_cfg = text_config(model)
    if not uses_json_tokenizer(text_cfg):
        return open_clip.get_tokenizer(model)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    try:
        return JsonTokenizer(_tokenizer_folder(model, text_cfg["hf_tokenizer_name"]),
                             context_length=int(text_cfg.get("context_length", 77)),
                             clean=kwargs.pop("clean", "whitespace"),
                             strip_sep_token=bool(kwargs.pop("strip_sep_token", False)))
    except TokenizerFilesError as error:
        raise EncoderLoadError(f"{model!r}: {error}") from error
    except ImportError as error:  # an hf-hub: model, whose config validate_spec does not read
        raise EncoderLoadError(f"{model!r} needs the tokenizers package: {TOKENIZERS_EXTRA}.") from error


def _tokenizer_folder(model: str, name: str) -> Path:
    from clip_search.encoders.json_tokenizer import FILES, OPTIONAL_FILES, TokenizerFilesError

    if model.startswith("local-dir:"):
        return Path(model.removeprefix("local-dir:")).expanduser()
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    from huggingface_hub import hf_hub_download

    try:
        folder = Path(hf_hub_download(name, FILES[0])).parent
        for file in FILES[1:]:
            hf_hub_download(name, file)
    except Exception as error:  # offline and not cached, unknown repository, ...
        raise TokenizerFilesError(
            f"the tokenizer {name!r} is neither a local folder nor readable from the Hugging Face Hub "
            f"or its cache ({error}). Offline, use a local-dir: folder holding the tokenizer files."
        ) from error
    for file in OPTIONAL_FILES:
        try:
            hf_hub_download(name, file)
        except Exception:  # optional: tokenizer_config.json alone names the special tokens
            pass
    return folder
