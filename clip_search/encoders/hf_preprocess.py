"""The image preprocessing a Hugging Face CLIP folder declares, as torchvision transforms.

``CLIPImageProcessor`` resizes (PIL, the shortest edge to ``size`` or to an exact height × width),
centre-crops, scales by 1/255 and normalises with the folder's mean and std. The transform built
here does the same with the steps ``ImageEncoder`` already batches and drafts (a torchvision
``Resize`` first, ``ToTensor`` + ``Normalize`` last), so every fast image path applies as it does
to open_clip models. One step differs from open_clip's: transformers places the crop at
``(size - crop) // 2`` while torchvision rounds to nearest, a one-pixel shift whenever the margin
is odd; ``FloorCenterCrop`` keeps transformers' offsets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from clip_search.imaging import to_rgb  # transparency on white, as transformers' convert_rgb

# CLIPImageProcessor's defaults, for keys an older folder leaves out.
DEFAULTS: dict[str, Any] = {
    "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}
# PIL's resample codes, as transformers stores them, to torchvision's modes.
_RESAMPLE = {0: InterpolationMode.NEAREST, 1: InterpolationMode.LANCZOS, 2: InterpolationMode.BILINEAR,
             3: InterpolationMode.BICUBIC, 4: InterpolationMode.BOX, 5: InterpolationMode.HAMMING}


class PreprocessConfigError(ValueError):
    """The folder's image processor config is missing or asks for what is not reproduced here."""


class FloorCenterCrop:
    """transformers' centre crop of a PIL image: offsets rounded down. Never pads: the loader
    refuses a crop larger than the resized image."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width

    def __call__(self, image: Image.Image) -> Image.Image:
        left, top = (image.width - self.width) // 2, (image.height - self.height) // 2
        return image.crop((left, top, left + self.width, top + self.height))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(height={self.height}, width={self.width})"


def image_processor_config(folder: Path) -> dict[str, Any]:
    """``preprocessor_config.json`` (the Hub's folders, transformers 4), else the
    ``image_processor`` part of ``processor_config.json`` (transformers 5), over the defaults."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            config = config[key] if key else config
        except (OSError, ValueError, KeyError) as error:
            raise PreprocessConfigError(f"{name} cannot be read ({error})") from error
        if not isinstance(config, dict):
            raise PreprocessConfigError(f"{name} holds no image processor settings")
        return {**DEFAULTS, **config}
    raise PreprocessConfigError(
        "no preprocessor_config.json or processor_config.json: save the checkpoint's CLIPProcessor "
        "or CLIPImageProcessor into the folder too")


def image_transform(config: dict[str, Any], image_size: int) -> transforms.Compose:
    """The transform of ``config`` (see ``image_processor_config``) for a model that takes
    ``image_size`` px squares; what it would not reproduce exactly is refused."""
    if not config["do_resize"]:
        raise PreprocessConfigError("do_resize=false is not supported: CLIP needs a fixed input size")
    if not config["do_rescale"] or abs(config["rescale_factor"] * 255 - 1) > 1e-9:
        raise PreprocessConfigError(f"only a 1/255 rescale is supported (do_rescale={config['do_rescale']}, "
                                    f"rescale_factor={config['rescale_factor']})")
    resample = _RESAMPLE.get(config["resample"])
    if resample is None:
        raise PreprocessConfigError(f"unknown resample {config['resample']!r}")
    shortest = _shortest_edge(config["size"])
    resized = (shortest, shortest) if shortest else _pair(config["size"], "size")  # at least this big
    if config["do_center_crop"]:
        output = _pair(config["crop_size"], "crop_size")
    elif shortest:
        raise PreprocessConfigError("a shortest-edge resize without a centre crop gives images that are "
                                    "not square")
    else:
        output = resized
    if output != (image_size, image_size):
        raise PreprocessConfigError(f"the preprocessing gives {output[0]}×{output[1]} px but the model "
                                    f"takes {image_size}×{image_size}")
    if output[0] > resized[0] or output[1] > resized[1]:
        raise PreprocessConfigError(f"crop_size {output} is larger than the resized image {resized}")
    mean, std = ((config["image_mean"], config["image_std"]) if config["do_normalize"]
                 else ([0.0] * 3, [1.0] * 3))
    steps = [transforms.Resize(shortest or list(resized), interpolation=resample)]
    if config["do_center_crop"]:
        steps.append(FloorCenterCrop(*output))
    return transforms.Compose([*steps, to_rgb, transforms.ToTensor(), transforms.Normalize(mean, std)])


def _shortest_edge(size: Any) -> int | None:
    """An int (transformers 4's CLIP configs) or ``{"shortest_edge": n}``: resize that edge to n."""
    if isinstance(size, dict) and set(size) == {"shortest_edge"}:
        size = size["shortest_edge"]
    return size if isinstance(size, int) else None


def _pair(value: Any, name: str) -> tuple[int, int]:
    """An int (a square) or ``{"height": h, "width": w}`` → (h, w)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and set(value) == {"height", "width"} and all(
            isinstance(value[key], int) for key in value):
        return value["height"], value["width"]
    raise PreprocessConfigError(f"unsupported {name} {value!r}")
