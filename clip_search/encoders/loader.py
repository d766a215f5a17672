"""One way to load a CLIP model: open_clip's factory behind a spec, with clear errors.

Weights come from an open_clip pretrained tag, a local checkpoint file, a ``local-dir:``
folder (what ``clip_train`` writes), ``hf-hub:org/name``, or an ``hf-clip:`` folder of a
Hugging Face ``transformers`` CLIPModel (mapped onto open_clip by ``hf_clip``). A model whose
weights cannot be read is an error: nothing here ever falls back to random weights.
``"random"`` must be asked for by name (benchmarks and architecture tests).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clip_search.encoders.spec import EncoderLoadError, EncoderSpec, Towers
from clip_search.weights import HF_CLIP, RANDOM

logger = logging.getLogger(__name__)

@dataclass
class LoadedClip:
    """A model in eval mode, its preprocessing and tokenizer, and what identifies it."""

    spec: EncoderSpec
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    fingerprint: str
    dimension: int
    towers: Towers
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())

    @property
    def logit_bias(self) -> float | None:
        """The learned bias of a model trained with a sigmoid loss (SigLIP), None for CLIP's
        softmax: zero-shot scores are ``sigmoid(scale * cos + bias)`` with it."""
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias)


def validate_spec(spec: EncoderSpec) -> None:
    """Refuse weights that cannot be read, a model name paired with weights trained for another
    activation (open_clip #771), and a model family whose run-time packages are missing."""
    _validate_weights(spec)
    if not spec.model.startswith((HF_CLIP, "hf-hub:")):  # an hf-hub: config is read when loading
        from clip_search.encoders import families

        families.check_requirements(spec.model, spec.pretrained)


def _validate_weights(spec: EncoderSpec) -> None:
    import open_clip

    if spec.model.startswith(HF_CLIP):
        from clip_search.encoders import hf_clip

        hf_clip.inspect(spec.model)
        return
    if spec.model.startswith("local-dir:"):
        folder = Path(spec.model.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise EncoderLoadError(f"{spec.model!r}: no open_clip_config.json in {str(folder)!r}.")
        if not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
            # open_clip would only warn and go on with random weights.
            raise EncoderLoadError(f"{spec.model!r}: no weights file in {str(folder)!r}.")
        return
    if spec.uses_schema or spec.pretrained == RANDOM:
        return
    if not spec.pretrained:
        raise EncoderLoadError(
            f"No weights configured for {spec.model!r}: set PRETRAINED to a tag or a checkpoint "
            "path ('random' only for benchmarks)."
        )
    name = spec.model.replace("/", "-")
    if open_clip.get_model_config(name) is None:
        raise EncoderLoadError(
            f"Unknown open_clip model {spec.model!r}. Use a built-in name "
            f"(open_clip.list_models()), 'local-dir:/path', 'hf-clip:/path' or 'hf-hub:org/name'."
        )
    tag_cfg = open_clip.get_pretrained_cfg(name, spec.pretrained)
    if tag_cfg:
        model_quick_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))
        if bool(tag_cfg.get("quick_gelu", False)) != model_quick_gelu:
            hint = f"{name}-quickgelu" if not model_quick_gelu else name.removesuffix("-quickgelu")
            raise EncoderLoadError(
                f"Weights {spec.pretrained!r} were trained with a different GELU than model "
                f"{spec.model!r}: embeddings would be silently wrong. Use MODEL={hint!r}."
            )
        return
    path = Path(spec.pretrained).expanduser()
    if not path.exists():
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise EncoderLoadError(
            f"PRETRAINED={spec.pretrained!r} is neither a checkpoint file nor a known tag of "
            f"{spec.model!r} (tags: {', '.join(tags) or 'none'})."
        )
    if not path.is_file() or not _readable(path):
        raise EncoderLoadError(f"Checkpoint {str(path)!r} is not a readable file.")


def _readable(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.read(1)
        return True
    except OSError:
        return False


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of the loaded weights, in name order.

    Hashing what was loaded (not the file) gives the same id whether the weights came from
    a tag, a file or the hub, and changes when the same name points at other weights.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.float()
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def load_clip(spec: EncoderSpec, towers: Towers = "both") -> LoadedClip:
    """Create the model, load its weights, put it in eval mode with gradients off.

    ``towers="text"`` drops the image tower after loading, so the web process that only
    encodes queries keeps the text tower in memory; ``towers="image"`` drops the text tower
    (image queries in the web process). The fingerprint is taken before that,
    over all weights, so web and worker processes agree on the encoder's identity.
    """
    validate_spec(spec)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.model.startswith(HF_CLIP):
        from clip_search.encoders import hf_clip

        model, preprocess, tokenizer = hf_clip.load(spec.model, precision=spec.precision, device=spec.device)
    else:
        model, preprocess, tokenizer = _create_open_clip(spec)
    model.eval()
    model.requires_grad_(False)
    fingerprint = weights_fingerprint(model)
    dimension = _embedding_dimension(model)
    if towers == "text":
        model.visual = None  # the web process encodes queries only
    elif towers == "image":
        _drop_text_tower(model)  # an image query in the web process needs no second text tower
    config = {"model": spec.model, "pretrained": spec.pretrained, "precision": spec.precision}
    logger.info("Loaded CLIP %s (%s), %s-d, fingerprint %s, towers=%s",
                spec.model, spec.weights_label, dimension, fingerprint[:12], towers)
    return LoadedClip(spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer,
                      fingerprint=fingerprint, dimension=dimension, towers=towers, config=config)


def _create_open_clip(spec: EncoderSpec) -> tuple[torch.nn.Module, Any, Any]:
    """``(model, eval preprocess, tokenizer)`` from open_clip's factory (the tokenizer without
    transformers where the family does not need it: ``families.tokenizer_for``)."""
    import open_clip

    from clip_search.encoders import families

    if spec.pretrained == RANDOM:
        torch.manual_seed(0)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*QuickGELU mismatch.*")
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model,
                pretrained=None if spec.pretrained in ("", RANDOM) else spec.pretrained,
                precision=spec.precision,
                device=spec.device,
                load_weights=spec.pretrained != RANDOM,
            )
        tokenizer = families.tokenizer_for(spec.model)
    except EncoderLoadError:
        raise
    except UserWarning as error:
        raise EncoderLoadError(str(error)) from error
    except Exception as error:  # a corrupt checkpoint fails with any unpickler error; chained below
        raise EncoderLoadError(
            f"Could not load CLIP model {spec.model!r} with weights {spec.pretrained!r}: {error}. "
            "Offline? Point PRETRAINED at a local checkpoint file or MODEL at 'local-dir:/path'."
        ) from error
    return model, preprocess, tokenizer


def _drop_text_tower(model: torch.nn.Module) -> None:
    if hasattr(model, "text"):  # CustomTextCLIP (e.g. hf-hub text towers) keeps it in one module
        model.text = None
        return
    for name in ("transformer", "token_embedding", "ln_final", "positional_embedding", "text_projection"):
        setattr(model, name, None)


def _embedding_dimension(model: torch.nn.Module) -> int:
    text = getattr(model, "text", None)  # CustomTextCLIP: SigLIP, Hugging Face text towers
    if text is not None and getattr(text, "output_dim", None):
        return int(text.output_dim)
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if projection is not None:
        return int(projection.shape[1])
    return int(model.visual.output_dim)


_cache: dict[tuple[EncoderSpec, Towers], LoadedClip] = {}
_cache_lock = threading.Lock()


def get_clip(spec: EncoderSpec | None = None, towers: Towers = "both") -> LoadedClip:
    """The process-wide loaded model for ``spec`` (settings by default): loaded once."""
    spec = spec or EncoderSpec.from_settings()
    with _cache_lock:
        loaded = _cache.get((spec, "both")) or _cache.get((spec, towers))
        if loaded is None:
            loaded = _cache[(spec, towers)] = load_clip(spec, towers)
        return loaded


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
