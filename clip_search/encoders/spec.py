"""What to load (``EncoderSpec``) and the loader's error, without torch.

Kept apart from ``loader`` so that a web process answering text queries from a cached ONNX
graph (``graph_cache``) can name its model, and fail with the same error, without importing
torch or open_clip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from clip_search.weights import carries_own_weights, weights_label

Towers = Literal["both", "text", "image"]


class EncoderLoadError(RuntimeError):
    """The configured CLIP model or its weights cannot be loaded. The message says why."""


@dataclass(frozen=True)
class EncoderSpec:
    """What to load. Two specs that are equal load the same model.

    ``pretrained`` is always empty for a ``local-dir:``, ``hf-clip:`` or ``hf-hub:`` model: those
    carry their own weights and open_clip ignores the argument (with a warning in every process
    that loads one). Dropping it here keeps PRETRAINED's default tag out of the loader's
    arguments, the encoder's row and its label, and makes a spec from settings equal to one from
    that row.
    """

    model: str
    pretrained: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.pretrained and carries_own_weights(self.model):
            object.__setattr__(self, "pretrained", "")

    @classmethod
    def from_settings(cls) -> EncoderSpec:
        from clip_search.conf import clip_settings

        return cls(model=clip_settings.MODEL, pretrained=clip_settings.PRETRAINED,
                   device=clip_settings.DEVICE, precision=clip_settings.PRECISION,
                   threads=clip_settings.THREADS)

    def with_weights(self, model: str, pretrained: str = "") -> EncoderSpec:
        """Same device, precision and threads, other weights (a model switch)."""
        return replace(self, model=model, pretrained=pretrained)

    @property
    def uses_schema(self) -> bool:
        return carries_own_weights(self.model)

    @property
    def weights_label(self) -> str:
        """Where the weights come from, as ``EncoderModel`` rows of this spec say it."""
        return weights_label(self.model, self.pretrained)
