"""Where a model's weights come from, in words: the label of an encoder everywhere it is shown.

Torch-free on purpose: ``EncoderModel.__str__``, the admin's encoder list and ``clip_reindex``
label encoders without loading open_clip. The loader uses the same rules, so a spec and the
database row it becomes say the same thing.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

# Weights asked for by name as random (benchmarks and architecture tests): never a fallback.
RANDOM = "random"
# A folder a Hugging Face ``transformers`` CLIPModel was saved to (clip_search.encoders.hf_clip).
HF_CLIP = "hf-clip:"
# MODEL forms that carry their own weights: PRETRAINED does not apply to them.
SELF_CONTAINED_PREFIXES = ("local-dir:", "hf-hub:", HF_CLIP)
# Those that name a folder on this machine (its files are checked at deploy time).
LOCAL_FOLDER_PREFIXES = ("local-dir:", HF_CLIP)


def carries_own_weights(model: str) -> bool:
    """A ``local-dir:`` or ``hf-clip:`` folder or an ``hf-hub:`` repository: PRETRAINED does not
    apply."""
    return model.startswith(SELF_CONTAINED_PREFIXES)


def weights_label(model: str, pretrained: str) -> str:
    """The pretrained tag, the checkpoint's file name, or the folder/hub the model comes from.

    ``pretrained`` is read only for a plain model name: rows written before PRETRAINED stopped
    applying to ``local-dir:`` models still hold the settings' default tag, which never loaded.
    "random" is said only of the explicit sentinel.
    """
    if model.startswith(LOCAL_FOLDER_PREFIXES):
        return str(_("weights in the folder"))
    if model.startswith("hf-hub:"):
        return str(_("weights from the Hugging Face Hub"))
    if pretrained == RANDOM:
        return RANDOM
    if not pretrained:
        return str(_("no weights named"))
    if "/" in pretrained or "\\" in pretrained or "." in pretrained:  # open_clip tags have none
        return pretrained.replace("\\", "/").rsplit("/", 1)[-1]
    return pretrained
