"""Hugging Face CLIP folders (``MODEL = "hf-clip:/path"``) give transformers' own vectors.

transformers is the reference (a test dependency only: clip_search never imports it). Each
folder holds a randomly initialised ``CLIPModel`` (seeded, every parameter then nudged off its
initial value so that a swapped bias or layer norm cannot hide behind zeros and ones) saved with
``save_pretrained``, next to a tokenizer built from open_clip's bundled BPE merges and an image
processor: nothing is downloaded. Each shape keeps its real patch size, input size, activation
and structure at small widths; one full-size ViT-B/32 runs too. The references are read back
from the folder by transformers itself (``from_pretrained``), so the folder is read the same way.

Thresholds: vectors, L2-normalised on both sides, max abs diff ≤ 1e-4; token ids equal; pixels
≤ 1e-6 against ``CLIPImageProcessorPil`` (PIL resize, as transformers 4's CLIPImageProcessor
did) and ≤ 0.05 in normalised units (about 3 grey levels of 255) against transformers 5's
default ``CLIPImageProcessor``, whose resize is torchvision's tensor bicubic. No database except
the end-to-end test.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from django.core.management import call_command
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from clip_search.encoders import (
    EncoderLoadError,
    EncoderSpec,
    ImageEncoder,
    TextEncoder,
    hf_clip,
    hf_preprocess,
    load_clip,
)
from tests.conftest import require

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
VECTORS = 1e-4

TEXTS = [
    "dress",
    "Blue Leather handbag with a gold chain",
    "It's a DON'T-miss: 50% off!! (today only)",
    "it’s “quoted” — ﬁne ＦＵＬＬ width",
    "Crème brûlée façade, naïve ΟΔΟΣ, İstanbul, 日本語のテキスト, emoji 👗👠",
    "Tom &amp; Jerry <b>tags</b>",
    "a\tb\n  c",
    "<|endoftext|> typed by a shopper",
    "",
    # Longer than the context: cut to its first tokens, never an exception.
    "very long query " + " ".join(f"word{i}" for i in range(120)),
]

# The real shapes at small widths (text 64 wide, vision 96, projection 48, 2-3 layers).
SHAPES = {
    # openai/clip-vit-base-patch32: QuickGELU; saved the way transformers 5 saves a processor
    # (tokenizer.json, processor_config.json).
    "ViT-B-32": {"patch_size": 32, "hidden_act": "quick_gelu", "layout": "transformers-5"},
    # A LAION-style ViT-B/16 (FashionCLIP's family uses GELU) in the layout of the Hub's folders:
    # vocab.json + merges.txt, a preprocessor_config.json with int sizes, a config.json that
    # leaves defaults out; another mean/std and layer-norm epsilon, to show they are read.
    "ViT-B-16": {"patch_size": 16, "hidden_act": "gelu", "layout": "hub", "layer_norm_eps": 1e-6,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    # openai/clip-vit-large-patch14: QuickGELU, the legacy eos_token_id 2 (pooled at the highest id).
    "ViT-L-14": {"patch_size": 14, "hidden_act": "quick_gelu", "layout": "transformers-5", "eos_token_id": 2},
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory) -> Path:
    """vocab.json + merges.txt of the CLIP vocabulary, from open_clip's bundled merges (the same
    files openai/clip-vit-base-patch32 ships)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    folder = tmp_path_factory.mktemp("bpe")
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_config(patch_size: int = 32, hidden_act: str = "quick_gelu", *, layer_norm_eps: float = 1e-5,
                eos_token_id: int = 49407, **_: object):
    text = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "hidden_act": hidden_act, "eos_token_id": eos_token_id}
    vision = {"hidden_size": 96, "intermediate_size": 384, "num_hidden_layers": 3, "num_attention_heads": 3,
              "patch_size": patch_size, "image_size": 224, "hidden_act": hidden_act,
              "layer_norm_eps": layer_norm_eps}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=48)


def random_model(config, seed: int = 0):
    """Seeded, with every parameter nudged: zero biases and unit norms would hide a bad mapping."""
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def save_folder(model, folder: Path, bpe_files: Path, *, layout: str = "transformers-5",
                image_mean=None, image_std=None, **_: object) -> Path:
    """``save_pretrained`` of the model and of a CLIPProcessor (tokenizer from ``bpe_files``)."""
    model.save_pretrained(folder)
    tokenizer = transformers.CLIPTokenizer(vocab=str(bpe_files / "vocab.json"),
                                           merges=str(bpe_files / "merges.txt"))
    image_options = {"image_mean": image_mean, "image_std": image_std} if image_mean else {}
    processor = transformers.CLIPProcessor(
        image_processor=transformers.CLIPImageProcessor(**image_options), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    if layout == "hub":
        _as_hub_layout(folder, bpe_files)
    return folder


def _as_hub_layout(folder: Path, bpe_files: Path) -> None:
    """The files transformers 4 wrote for a CLIP folder, which Hub repositories still hold."""
    image = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    (folder / "processor_config.json").unlink()
    (folder / "tokenizer.json").unlink()
    shutil.copy(bpe_files / "vocab.json", folder)
    shutil.copy(bpe_files / "merges.txt", folder)
    image.update(size=image["size"]["shortest_edge"], crop_size=image["crop_size"]["height"],
                 feature_extractor_type="CLIPFeatureExtractor")
    del image["image_processor_type"]
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    config = json.loads((folder / "config.json").read_text())
    defaults = {"text_config": transformers.CLIPTextConfig().to_dict(),
                "vision_config": transformers.CLIPVisionConfig().to_dict()}
    for key, tower_defaults in defaults.items():  # transformers 4 wrote only what differs
        config[key] = {k: v for k, v in config[key].items() if tower_defaults.get(k) != v}
    (folder / "config.json").write_text(json.dumps(config))


class Checkpoint:
    """One saved folder: transformers' model and processors read back from it, and clip_search's."""

    def __init__(self, folder: Path, model) -> None:
        self.folder, self.hf = folder, model
        self.tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
        self.pixels_pil = transformers.CLIPImageProcessorPil.from_pretrained(folder)
        self.pixels_default = transformers.CLIPImageProcessor.from_pretrained(folder)
        self.spec = EncoderSpec(f"hf-clip:{folder}")
        self.clip = load_clip(self.spec)

    @torch.inference_mode()
    def text_vectors(self, texts: list[str]) -> np.ndarray:
        inputs = self.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.hf.config.text_config.max_position_embeddings)
        return F.normalize(self.hf.get_text_features(**inputs).pooler_output, dim=-1).numpy()

    @torch.inference_mode()
    def image_vectors(self, images: list[Image.Image]) -> np.ndarray:
        pixels = self.pixels_pil(images=images, return_tensors="pt")["pixel_values"]
        return F.normalize(self.hf.get_image_features(pixel_values=pixels).pooler_output, dim=-1).numpy()


@pytest.fixture(scope="module", params=list(SHAPES))
def checkpoint(request, tmp_path_factory, bpe_files) -> Checkpoint:
    shape = SHAPES[request.param]
    model = random_model(clip_config(**shape))
    folder = save_folder(model, tmp_path_factory.mktemp(request.param), bpe_files, **shape)
    return Checkpoint(folder, model)


def photos() -> list[Image.Image]:
    """Drawn product-like pictures in sizes whose centre-crop margins are odd (227, 231, 641 px
    long sides: transformers rounds the offset down where torchvision rounds to nearest), square,
    and smaller than the model's input."""
    rng = np.random.default_rng(7)
    pictures = []
    for index, size in enumerate([(227, 224), (224, 231), (641, 480), (224, 224), (97, 333)]):
        image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(150, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4 + index):
            x0, y0 = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
            x1, y1 = x0 + rng.integers(10, size[0] // 2), y0 + rng.integers(10, size[1] // 2)
            draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        noise = rng.integers(0, 24, (size[1], size[0], 3), dtype=np.uint8)
        pictures.append(Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8)))
    return pictures


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


# --------------------------------------------------------------------------- equal to transformers


def test_text_vectors_equal_transformers(checkpoint):
    """Through TextEncoder (the fast path: the causal tower cut after the last end token) and
    through the mapped model's full ``encode_text``."""
    expected = checkpoint.text_vectors(TEXTS)
    fast = TextEncoder(checkpoint.clip, cache_size=0).encode(TEXTS)
    with torch.inference_mode():
        tokens = checkpoint.clip.tokenizer(TEXTS)
        exact = F.normalize(checkpoint.clip.model.encode_text(tokens), dim=-1).numpy()
    assert max_diff(fast, expected) <= VECTORS and max_diff(exact, expected) <= VECTORS
    assert max_diff(fast, exact) <= 1e-6  # the fast path is the exact one
    # The texts are told apart, but for a typed end token: it ends the text (as in transformers),
    # so that query pools where the empty one does.
    typed, empty = TEXTS.index("<|endoftext|> typed by a shopper"), TEXTS.index("")
    assert max_diff(expected[typed], expected[empty]) <= VECTORS
    assert len({bytes(np.round(vector, 3)) for vector in expected}) == len(TEXTS) - 1


def test_image_vectors_equal_transformers(checkpoint):
    """From image bytes through ImageEncoder (decode, preprocess, batched tower)."""
    pictures = photos()
    results = ImageEncoder(checkpoint.clip, batch_size=3).encode_bytes([png(p) for p in pictures])
    ours = np.stack([result.vector for result in results])
    assert max_diff(ours, checkpoint.image_vectors(pictures)) <= VECTORS


def test_token_ids_equal_clip_tokenizers(checkpoint):
    """The folder's own vocabulary, CLIPTokenizer's normalisation and truncation to the context
    length from config.json; padding is zeros after the end token (open_clip's)."""
    context = checkpoint.hf.config.text_config.max_position_embeddings
    ours = checkpoint.clip.tokenizer(TEXTS)
    assert ours.shape == (len(TEXTS), context) and checkpoint.clip.tokenizer.context_length == context
    for text, row in zip(TEXTS, ours.tolist(), strict=True):
        expected = checkpoint.tokenizer(text, truncation=True, max_length=context)["input_ids"]
        assert row == expected + [0] * (context - len(expected)), text
    assert len(checkpoint.tokenizer(TEXTS[-1])["input_ids"]) > context  # the long one was cut


def test_pixels_equal_clip_image_processors(checkpoint):
    pictures = photos()
    ours = ImageEncoder(checkpoint.clip).preprocess(pictures)
    pil = checkpoint.pixels_pil(images=pictures, return_tensors="pt")["pixel_values"]
    default = checkpoint.pixels_default(images=pictures, return_tensors="pt")["pixel_values"]
    assert ours.shape == pil.shape == (len(pictures), 3, 224, 224)
    assert (ours - pil).abs().max() <= 1e-6
    assert (ours - default).abs().max() <= 0.05 and (ours - default).abs().mean() <= 0.005


def test_onnx_text_backend_gives_the_same_vectors(checkpoint):
    """The ONNX text backend rebuilds the mapped tower (GELU or QuickGELU, the folder's epsilon)."""
    require(all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnx")),
            "onnxruntime/onnx are not installed (the onnx extra)")
    encoder = TextEncoder(checkpoint.clip, backend="onnx", cache_size=0)
    assert encoder.backend == "onnx"
    assert max_diff(encoder.encode(TEXTS), checkpoint.text_vectors(TEXTS)) <= VECTORS


@pytest.mark.slow
def test_full_size_vit_b_32(tmp_path, bpe_files):
    """transformers' default CLIPConfig is OpenAI's ViT-B/32 (151 M parameters): ~10 s."""
    model = random_model(transformers.CLIPConfig(), seed=1)
    checkpoint = Checkpoint(save_folder(model, tmp_path, bpe_files), model)
    assert checkpoint.clip.dimension == 512
    fast = TextEncoder(checkpoint.clip, cache_size=0).encode(TEXTS[:4])
    assert max_diff(fast, checkpoint.text_vectors(TEXTS[:4])) <= VECTORS
    pictures = photos()[:2]
    ours = ImageEncoder(checkpoint.clip).encode_images(pictures)
    assert max_diff(ours, checkpoint.image_vectors(pictures)) <= VECTORS


@pytest.fixture(scope="module")
def tokenizers(bpe_files) -> tuple:
    """(clip_search's, transformers') tokenizer over ``bpe_files``."""
    from clip_search.encoders.hf_tokenizer import load_tokenizer

    return load_tokenizer(bpe_files, 77), transformers.CLIPTokenizer(
        vocab=str(bpe_files / "vocab.json"), merges=str(bpe_files / "merges.txt"))


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=40))
def test_token_ids_equal_clip_tokenizers_on_any_text(tokenizers, text):
    """Whatever a shopper types: control characters, combining marks, any script. Characters
    unassigned in Python's Unicode tables are left out: the ``regex`` module knows later Unicode
    versions than ``tokenizers`` (a recently assigned ideograph is a letter to one, a symbol to
    the other), a difference no real query meets."""
    ours, theirs = tokenizers
    expected = theirs(text, truncation=True, max_length=77)["input_ids"]
    assert ours([text])[0].tolist() == expected + [0] * (77 - len(expected))


# --------------------------------------------------------------------------- the folder as a model


@pytest.fixture(scope="module")
def small(tmp_path_factory, bpe_files) -> Path:
    """A valid ViT-B/32-shaped folder the tests below copy and break."""
    return save_folder(random_model(clip_config(), seed=3), tmp_path_factory.mktemp("small"), bpe_files)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_defaults_are_transformers_defaults():
    """A config.json that leaves a key out means transformers' default, as transformers reads it."""
    text, vision = transformers.CLIPTextConfig(), transformers.CLIPVisionConfig()
    assert {key: getattr(text, key) for key in hf_clip.TEXT_DEFAULTS} == hf_clip.TEXT_DEFAULTS
    assert {key: getattr(vision, key) for key in hf_clip.VISION_DEFAULTS} == hf_clip.VISION_DEFAULTS
    assert transformers.CLIPConfig().projection_dim == hf_clip.PROJECTION_DIM
    processor = transformers.CLIPImageProcessorPil()
    expected = {key: getattr(processor, key) for key in hf_preprocess.DEFAULTS}
    expected.update(resample=int(expected["resample"]), image_mean=list(expected["image_mean"]),
                    image_std=list(expected["image_std"]))
    assert expected == hf_preprocess.DEFAULTS


def test_weights_files_of_every_layout_load_the_same_model(small, tmp_path):
    """model.safetensors, pytorch_model.bin (torch.load(weights_only=True)) and a sharded
    safetensors index: one model, one fingerprint."""
    reference = load_clip(EncoderSpec(f"hf-clip:{small}"))
    as_bin = copy_of(small, tmp_path)
    (as_bin / "model.safetensors").unlink()
    model = transformers.CLIPModel.from_pretrained(small)
    torch.save(model.state_dict(), as_bin / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="2MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        shutil.copy(small / name, sharded)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    for folder in (as_bin, sharded):
        assert load_clip(EncoderSpec(f"hf-clip:{folder}")).fingerprint == reference.fingerprint


def test_carries_its_own_weights_and_is_fingerprinted_like_any_model(small, tmp_path):
    from safetensors.torch import load_file, save_file

    spec = EncoderSpec(f"hf-clip:{small}", "laion2b_s34b_b79k")
    assert spec.pretrained == "" and spec.weights_label == "weights in the folder" and spec.uses_schema
    both, text = load_clip(spec), load_clip(spec, towers="text")
    assert both.fingerprint == text.fingerprint and text.model.visual is None
    assert not both.model.training and not any(p.requires_grad for p in both.model.parameters())
    nudged = copy_of(small, tmp_path)
    state = load_file(str(nudged / "model.safetensors"))
    state["text_model.final_layer_norm.bias"] += 1e-3
    save_file(state, str(nudged / "model.safetensors"), metadata={"format": "pt"})
    assert load_clip(EncoderSpec(f"hf-clip:{nudged}")).fingerprint != both.fingerprint


def test_runs_without_transformers_installed(small):
    """In a process where transformers and tokenizers cannot be imported (open_clip itself
    imports transformers when it can, so "not imported" would prove nothing here)."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["transformers"] = sys.modules["tokenizers"] = None  # import raises ImportError
        import django
        django.setup()
        from clip_search.encoders import EncoderSpec, ImageEncoder, TextEncoder, load_clip
        from PIL import Image
        clip = load_clip(EncoderSpec({f"hf-clip:{small}"!r}))
        text = TextEncoder(clip).encode(["a red mug"])
        image = ImageEncoder(clip).encode_images([Image.new("RGB", (300, 240), "red")])
        print(text.shape, image.shape)
    """)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "shop_demo.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["(1,", "48)", "(1,", "48)"]


def test_bf16_precision_loads(small):
    fp32 = TextEncoder(load_clip(EncoderSpec(f"hf-clip:{small}")), cache_size=0).encode(TEXTS[:3])
    bf16 = TextEncoder(load_clip(EncoderSpec(f"hf-clip:{small}", precision="bf16")), cache_size=0)
    assert (fp32 * bf16.encode(TEXTS[:3])).sum(axis=1).min() >= 0.99


def _edit_json(name: str, **changes):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        for path, value in changes.items():
            target = data
            *parents, key = path.split("__")
            for parent in parents:
                target = target[parent]
            target[key] = value
        (folder / name).write_text(json.dumps(data))
    return edit


def _truncate(name: str):
    def cut(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    return cut


def _as_bin_truncated(folder: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    _truncate("pytorch_model.bin")(folder)


def _drop_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    del state["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


BROKEN = {
    "no config.json": (lambda folder: (folder / "config.json").unlink(), "no config.json in"),
    "config.json not JSON": (lambda folder: (folder / "config.json").write_text("{"),
                             "config.json cannot be read"),
    "another family": (_edit_json("config.json", model_type="siglip"), "not a transformers CLIP model"),
    "unsupported activation": (_edit_json("config.json", vision_config__hidden_act="relu"),
                               "hidden_act 'quick_gelu' (text) / 'relu' (vision) is not supported"),
    "heads do not divide the width": (
        _edit_json("config.json", text_config__num_attention_heads=5),
        "text_config.hidden_size 64 is not a multiple of num_attention_heads 5"),
    "not a number": (_edit_json("config.json", vision_config__num_hidden_layers="3"),
                     "vision_config.num_hidden_layers '3' is not a positive integer"),
    "no weights": (lambda folder: (folder / "model.safetensors").unlink(), "no weights file"),
    "truncated safetensors": (_truncate("model.safetensors"), "model.safetensors cannot be read"),
    "truncated pytorch_model.bin": (_as_bin_truncated, "pytorch_model.bin cannot be read"),
    "weights of another width": (_edit_json("config.json", text_config__hidden_size=128,
                                            text_config__intermediate_size=512),
                                 "the weights do not fit config.json: Error(s) in loading state_dict"),
    "weights with fewer layers": (_edit_json("config.json", vision_config__num_hidden_layers=4),
                                  "Missing key(s) in state_dict: \"visual.transformer.resblocks.3."),
    "a tensor missing": (_drop_tensor, "vision_model.encoder.layers.1.self_attn.k_proj.bias is missing"),
    "no tokenizer": (lambda folder: (folder / "tokenizer.json").unlink(), "no tokenizer files"),
    "no image processor": (lambda folder: (folder / "processor_config.json").unlink(),
                           "no preprocessor_config.json or processor_config.json"),
    "crop of another size": (
        _edit_json("processor_config.json", image_processor__crop_size={"height": 256, "width": 256}),
        "the preprocessing gives 256×256 px but the model takes 224×224"),
}


# Found only by reading the weights (the system check reads safetensors headers, not tensors).
FOUND_IN_THE_WEIGHTS = {"truncated safetensors", "truncated pytorch_model.bin", "weights of another width",
                        "weights with fewer layers", "a tensor missing"}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_a_broken_folder_is_a_clear_error(small, tmp_path, breakage):
    """Never random weights: each problem is an EncoderLoadError that names the model and says what."""
    from clip_search.encoders.loader import validate_spec

    break_it, message = BROKEN[breakage]
    folder = copy_of(small, tmp_path)
    break_it(folder)
    spec = EncoderSpec(f"hf-clip:{folder}")
    with pytest.raises(EncoderLoadError) as error:
        load_clip(spec)
    assert str(error.value).startswith(f"'hf-clip:{folder}': ") and message in str(error.value)
    if breakage not in FOUND_IN_THE_WEIGHTS:  # found from the files' names and JSON alone
        with pytest.raises(EncoderLoadError):
            validate_spec(spec)


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderLoadError, match="is not a folder"):
        load_clip(EncoderSpec(f"hf-clip:{tmp_path / 'nowhere'}"))


def test_system_check_reports_a_broken_folder(small, tmp_path, settings):
    from clip_search.checks import check_model_files, check_pretrained_applies

    folder = copy_of(small, tmp_path)
    settings.CLIP_SEARCH = {"MODEL": f"hf-clip:{folder}", "PRETRAINED": "laion2b_s34b_b79k"}
    assert check_model_files() == []
    assert [w.id for w in check_pretrained_applies()] == ["clip_search.W003"]
    _truncate("model.safetensors")(folder)
    [error] = check_model_files()
    assert error.id == "clip_search.E006" and "model.safetensors" in error.msg


# --------------------------------------------------------------------------- end to end


def export_open_clip(loaded, folder: Path, bpe_files: Path) -> Path:
    """An open_clip CLIP (the project's demo model) saved as a transformers CLIPModel folder:
    the reverse of ``hf_clip.open_clip_state_dict``, checked here against transformers' forward."""
    model = loaded.model
    visual, blocks = model.visual, model.transformer.resblocks
    text_width, vision_width = model.token_embedding.weight.shape[1], visual.conv1.weight.shape[0]
    quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
    config = transformers.CLIPConfig(
        projection_dim=loaded.dimension,
        text_config={"hidden_size": text_width, "intermediate_size": blocks[0].mlp.c_fc.out_features,
                     "num_hidden_layers": len(blocks), "num_attention_heads": blocks[0].attn.num_heads,
                     "max_position_embeddings": model.positional_embedding.shape[0],
                     "hidden_act": "quick_gelu" if quick else "gelu"},
        vision_config={"hidden_size": vision_width, "patch_size": visual.conv1.kernel_size[0],
                       "image_size": visual.image_size[0],
                       "num_hidden_layers": len(visual.transformer.resblocks),
                       "intermediate_size": visual.transformer.resblocks[0].mlp.c_fc.out_features,
                       "num_attention_heads": visual.transformer.resblocks[0].attn.num_heads,
                       "hidden_act": "quick_gelu" if quick else "gelu"})
    ours = model.state_dict()
    names = {open_clip_name: hf_name for hf_name, open_clip_name in hf_clip.RENAMED.items()}
    state = {hf: ours[name] for name, hf in names.items()}
    state["text_projection.weight"] = ours["text_projection"].T
    state["visual_projection.weight"] = ours["visual.proj"].T
    for tower, prefix in hf_clip.TOWERS.items():
        for name, tensor in ours.items():
            if not name.startswith(prefix + "."):
                continue
            layer, rest = name.removeprefix(prefix + ".").split(".", 1)
            base = f"{tower}.encoder.layers.{layer}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.removeprefix("attn.in_proj_")
                for module, part in zip(hf_clip.QKV, tensor.chunk(3), strict=True):
                    state[f"{base}{module}.{kind}"] = part
            else:
                module, kind = rest.rsplit(".", 1)
                state[base + {v: k for k, v in hf_clip.BLOCK.items()}[module] + "." + kind] = tensor
    hf_model = transformers.CLIPModel(config).eval()
    hf_model.load_state_dict(state, strict=True)
    size = visual.image_size[0]
    mean, std = list(loaded.preprocess.transforms[-1].mean), list(loaded.preprocess.transforms[-1].std)
    hf_model.save_pretrained(folder)
    tokenizer = transformers.CLIPTokenizer(vocab=str(bpe_files / "vocab.json"),
                                           merges=str(bpe_files / "merges.txt"))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": size}, image_mean=mean, image_std=std,
                                                crop_size={"height": size, "width": size})
    transformers.CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def demo_as_hf(tmp_path_factory, demo_clip, bpe_files) -> Path:
    return export_open_clip(demo_clip, tmp_path_factory.mktemp("demo-hf"), bpe_files)


def test_the_exported_demo_model_is_the_demo_model(demo_as_hf, demo_clip):
    """transformers runs the exported folder as open_clip runs the demo model, and clip_search
    reads the folder back into the very same weights: the same fingerprint."""
    checkpoint = Checkpoint(demo_as_hf, transformers.CLIPModel.from_pretrained(demo_as_hf).eval())
    texts = ["a photo of a red mug", "a blue product"]
    assert max_diff(checkpoint.text_vectors(texts), TextEncoder(demo_clip).encode(texts)) <= VECTORS
    assert checkpoint.clip.fingerprint == demo_clip.fingerprint


@pytest.mark.django_db
def test_a_shop_switches_to_an_hf_clip_model_and_finds_its_products(demo_as_hf, demo_clip, settings,
                                                                    tmp_path):
    """The README's path: the catalog indexed with the current model, ``clip_reindex --model
    hf-clip:... --activate``, then search (by picture, and by words on the vector leg alone)."""
    from clip_search.models import Embedding, EncoderModel
    from clip_search.search import search
    from shop_demo.catalog.generator import generate_catalog
    from shop_demo.catalog.models import Product
    from shop_demo.catalog.training import query_for
    from tests.catalog import create_product, vector_of

    settings.MEDIA_ROOT = tmp_path / "media"
    specs = generate_catalog(24, seed=31)
    products = [create_product(spec) for spec in specs]
    call_command("clip_reindex")  # the settings' model (the demo's local-dir:) becomes active
    call_command("clip_reindex", "--model", f"hf-clip:{demo_as_hf}", "--activate")

    encoder = EncoderModel.objects.get(is_active=True)
    assert encoder.name == f"hf-clip:{demo_as_hf}" and encoder.weights_label == "weights in the folder"
    assert encoder.fingerprint == demo_clip.fingerprint and encoder.dimension == demo_clip.dimension
    expected = ImageEncoder(demo_clip).encode_bytes([p.image.open("rb").read() for p in products])
    for product, result in zip(products, expected, strict=True):
        assert np.dot(vector_of(product), result.vector) == pytest.approx(1.0, abs=1e-4)

    indexed = set(Embedding.objects.filter(encoder=encoder, status=Embedding.Status.INDEXED)
                  .values_list("object_pk", flat=True))
    spec, product = next((s, p) for s, p in zip(specs, products, strict=True) if str(p.pk) in indexed)
    by_picture = list(search(Product.objects.all(), image=product.image.open("rb").read(), limit=3))
    assert by_picture[0].pk == product.pk
    by_words = list(search(Product.objects.all(), text=query_for(spec.colour, spec.category),
                           weights={"fulltext": 0, "keyword": 0}, limit=5))
    pair_of = {p.pk: s.pair for s, p in zip(specs, products, strict=True)}
    assert by_words and all(hit.vector_rank is not None for hit in by_words)
    assert spec.pair in [pair_of[hit.pk] for hit in by_words]
