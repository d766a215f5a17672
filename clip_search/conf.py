"""clip_search settings, read from ``settings.CLIP_SEARCH`` the way DRF reads ``REST_FRAMEWORK``.

Values are looked up lazily on every attribute access through one object, ``clip_settings``,
so ``override_settings(CLIP_SEARCH=...)`` works in tests: nothing copies a setting at import.
Validation raises ``ImproperlyConfigured`` naming the bad key; ``checks.py`` turns that into
a system check error so a typo is reported by ``manage.py check``, not by an import.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Encoder: an open_clip model name (or a config registered with encoders.register_config)
    # with PRETRAINED, an open_clip tag or a local checkpoint file; or a model that carries its
    # own weights, "local-dir:/path" (what clip_train writes), "hf-clip:/path" (a transformers
    # CLIPModel folder) or "hf-hub:org/name", for which PRETRAINED does not apply (it is
    # ignored, default included).
    "MODEL": "ViT-B-32",
    "PRETRAINED": "laion2b_s34b_b79k",
    "DEVICE": "cpu",
    "PRECISION": "fp32",  # fp32 | bf16
    "THREADS": None,  # torch intra-op threads; None leaves torch's default
    "TEXT_ENCODER": {
        # torch | onnx (ONNX Runtime, the ``onnx`` extra; int8 onnx is the fastest on a CPU)
        "BACKEND": "torch",
        "QUANTIZE": False,  # int8 dynamic quantisation of the text transformer
        "CACHE_SIZE": 2048,  # LRU entries of query embeddings per process
        "THREADS": None,  # ONNX Runtime session threads; None = min(2, cores)
        # Where the onnx backend keeps built text graphs (manage.py clip_onnx), so that web
        # processes answer queries without torch; None = $XDG_CACHE_HOME/clip_search/onnx-text.
        "GRAPH_CACHE": None,
    },
    "IMAGE_ENCODER": {
        "BACKEND": "torch",  # torch | onnx
        "QUANTIZE": False,  # int8 image transformer (cosine >= 0.999 to fp32, see bench/)
        "DRAFT": True,  # decode big JPEGs at a reduced DCT scale (same pixels after resize)
        "THREADS": None,
        # Threads decoding and resizing images beside the model (Pillow releases the GIL);
        # None = min(2, cores).
        "DECODE_THREADS": None,
        # A GPU worker: the image tower on this torch device ("cuda", "cuda:1"), its matrix
        # products in fp16 or bf16 (autocast over the fp32 weights: same fingerprint).
        # None: where the model was loaded (DEVICE above).
        "DEVICE": None,
        "PRECISION": "fp32",  # fp32 | fp16 | bf16
        # clip_reindex: batches read and decoded ahead while the model embeds the current one
        # and the one before is written (clip_search.streaming); 0 = one step after another.
        "PREFETCH_BATCHES": 1,
    },
    "IMAGE": {
        "MAX_BYTES": 20 * 1024 * 1024,
        "MAX_PIXELS": 50_000_000,
        "FORMATS": ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "MPO"],
    },
    "BATCH_SIZE": 32,
    # Images of a product that get a searchable vector (in display order). Every image is
    # moderated whatever this says: the storefront shows them all.
    "MAX_IMAGES": 8,
    # Celery
    "QUEUE": "clip_search",
    "SIGNAL_PROCESSOR": "clip_search.signals.OnCommitSignalProcessor",
    "MAX_RETRIES": 5,
    # The periodic sweep (``clip_search.sweep``, Celery beat): a pending row is queued again
    # once it is PENDING_AFTER seconds old (its message presumed lost), and each run verifies
    # the next VERIFY_PER_RUN objects against their rows (clip_search.verify), resuming where
    # the previous run stopped.
    "SWEEP": {"VERIFY_PER_RUN": 5000, "PENDING_AFTER": 900},
    # Storage / index
    "HNSW": {"M": 16, "EF_CONSTRUCTION": 64},
    # Search
    "SEARCH": {
        "RRF_K": 60,
        # Fused hits returned at most (pages are cut from these). Above the legs' depths summed,
        # so every hit a leg found is reachable; the search says ``capped`` when a leg was full.
        "LIMIT": 1000,
        "DEPTH": {"vector": 200, "fulltext": 200, "keyword": 200},
        "WEIGHTS": {"vector": 1.0, "fulltext": 1.0, "keyword": 1.0},
        "EF_SEARCH": 100,
        "ITERATIVE_SCAN": "relaxed_order",  # off | relaxed_order | strict_order
        "MAX_QUERY_LENGTH": 512,
        # Keyword leg: the share of the query's trigrams found in a keyword (pg_trgm
        # word_similarity). High on purpose: the query must *be* a SKU or brand, perhaps
        # misspelled; a brand merely named in a longer query is the full-text leg's job.
        "TRIGRAM_THRESHOLD": 0.6,
        "TEXT_SEARCH_CONFIG": "english",  # PostgreSQL text search configuration
        # The vector leg's relevance floor for text queries (clip_search.calibration): "auto"
        # takes what the active encoder was calibrated to, a number sets it (cosine similarity for
        # FLOOR, a similarity difference for WINDOW), None turns it off. FLOOR: the similarity a
        # hit needs when no word of the query matches any product's text or keywords; WINDOW: how
        # far behind the query's best hit a vector hit may be.
        "RELEVANCE": {"FLOOR": "auto", "WINDOW": "auto"},
        # Misspelt words are corrected against the catalog's vocabulary (clip_search.lexicon):
        # 1 edit from ONE_TYPO letters, 2 from TWO_TYPOS.
        "TYPOS": {"ENABLED": True, "ONE_TYPO": 5, "TWO_TYPOS": 9},
        # Seconds a process reuses the synonym sets it read (a save clears its own at once).
        "SYNONYMS_CACHE_SECONDS": 30,
    },
    # The vocabulary and suggestions (clip_search.lexicon): the sweep rebuilds them when the
    # index changed, at most every REFRESH_AFTER seconds.
    "LEXICON": {"REFRESH_AFTER": 300},
    # Search-as-you-type: completions per request (default, most), and the kinds offered in an
    # empty search box.
    "SUGGEST": {"LIMIT": 8, "MAX_LIMIT": 20, "EMPTY_KINDS": ["category", "brand"]},
    # The search log (clip_search.searchlog): every API search, and the shop's own search()
    # calls it passes to ``searchlog.record``; the shopper only as a salted hash of the session;
    # rows older than RETENTION_DAYS are purged by the sweep; RESULTS_KEPT ranked results each.
    "SEARCH_LOG": {"ENABLED": True, "RETENTION_DAYS": 90, "RESULTS_KEPT": 100},
    # How the relevance floor is measured (clip_search.calibration): made-up words and products'
    # own titles as queries, the quantiles kept, and how much the indexed catalog may grow or
    # shrink before the sweep calibrates again.
    "CALIBRATION": {"NOISE_QUERIES": 200, "TITLE_QUERIES": 200, "NOISE_QUANTILE": 0.99,
                    "TITLE_QUANTILE": 0.9, "RECALIBRATE_AFTER": 0.25},
    # THRESHOLD: a category's probability at which an image is flagged. CLIP: its share of a
    # softmax over the safe prompts and the categories; SigLIP (a model with a logit bias): the
    # sigmoid of that category alone, far lower for a clear match; see clip_search/moderation.py.
    "MODERATION": {
        "ENABLED": True,
        "CATEGORIES": {
            "weapons": {
                "PROMPTS": ["a photo of a knife", "a photo of a blade", "a photo of a weapon"],
                "THRESHOLD": 0.5,
            },
        },
        "SAFE_PROMPTS": ["a product photo", "a photo of a product for sale"],
        "SAMPLE_RATE": 0.0,  # share of passed uploads also sent to the review queue
    },
    # Zero-shot product tagging (clip_search.tagging): each product's stored image vectors scored
    # against the shop's own label sets; staff accept or reject the suggestions.
    "TAGGING": {
        # {"colour": {"LABELS": ["red", "blue"], "PROMPTS": ["a photo of something {}"]}, ...}.
        # LABELS: a list of labels; a dict of labels to the words that fill the prompts for them
        # ({"T-shirts": ["t-shirt", "tee"]}); or the import path of a callable returning either
        # (labels kept in the shop's own tables). PROMPTS and MIN_CONFIDENCE: the defaults below.
        "SETS": {},
        # Templates, "{}" standing for a label's words; a label's vector is their average.
        "PROMPTS": ["a photo of a {}", "a product photo of a {}", "a {}"],
        # A label is suggested at this probability or more. CLIP: its share of a softmax over
        # the set's labels (0.5 suggests at most one per set); SigLIP (a model with a logit
        # bias): the sigmoid of that label alone, far lower for a clear match: set it per model.
        "MIN_CONFIDENCE": 0.5,
        # Accepted tags join the product's full-text document at this weight (A-D), so the
        # full-text leg and spelling correction know them; None keeps them out of search.
        "DOCUMENT_WEIGHT": "C",
        # The embed task suggests tags for the products it has just written.
        "AFTER_EMBED": False,
    },
}

# Dict-valued settings a user replaces whole; every other dict is merged key by key, so
# ``CLIP_SEARCH = {"SEARCH": {"RRF_K": 30}}`` keeps the other search defaults.
_REPLACED_WHOLE = ("CATEGORIES", "SETS")


def _merge(default: dict, user: dict, path: str) -> dict:
    merged = copy.deepcopy(default)
    for key, value in user.items():
        if key not in default:
            raise ImproperlyConfigured(
                f"CLIP_SEARCH{path}: unknown setting {key!r}. Known: {', '.join(sorted(default))}."
            )
        if isinstance(default[key], dict) and key not in _REPLACED_WHOLE:
            if not isinstance(value, dict):
                raise ImproperlyConfigured(f"CLIP_SEARCH{path}[{key!r}] must be a dict.")
            merged[key] = _merge(default[key], value, f"{path}[{key!r}]")
        else:
            merged[key] = value
    return merged


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ImproperlyConfigured(f"CLIP_SEARCH{message}")


def validate(values: dict[str, Any]) -> None:
    """Raise ImproperlyConfigured with the offending key for the first invalid value."""
    _require(isinstance(values["MODEL"], str) and values["MODEL"], "['MODEL'] must be a model name.")
    _require(isinstance(values["PRETRAINED"], str), "['PRETRAINED'] must be a string.")
    _require(values["PRECISION"] in ("fp32", "bf16"), "['PRECISION'] must be fp32 or bf16.")
    threads = values["THREADS"]
    _require(threads is None or (isinstance(threads, int) and threads > 0),
             "['THREADS'] must be None or a positive int.")
    _require(isinstance(values["BATCH_SIZE"], int) and values["BATCH_SIZE"] > 0,
             "['BATCH_SIZE'] must be a positive int.")
    _require(isinstance(values["QUEUE"], str) and values["QUEUE"], "['QUEUE'] must be a name.")
    _require(isinstance(values["MAX_IMAGES"], int) and 1 <= values["MAX_IMAGES"] <= 100,
             "['MAX_IMAGES'] must be 1..100.")
    for key in ("VERIFY_PER_RUN", "PENDING_AFTER"):
        _require(isinstance(values["SWEEP"][key], int) and values["SWEEP"][key] >= 0,
                 f"['SWEEP'][{key!r}] must be an int >= 0.")
    for encoder in ("TEXT_ENCODER", "IMAGE_ENCODER"):
        options = values[encoder]
        _require(options["BACKEND"] in ("torch", "onnx"), f"[{encoder!r}]['BACKEND'] must be torch or onnx.")
        _require(isinstance(options["QUANTIZE"], bool), f"[{encoder!r}]['QUANTIZE'] must be a bool.")
        threads = options["THREADS"]
        _require(threads is None or (isinstance(threads, int) and threads > 0),
                 f"[{encoder!r}]['THREADS'] must be None or a positive int.")
    image_encoder = values["IMAGE_ENCODER"]
    _require(image_encoder["DECODE_THREADS"] is None or (
        isinstance(image_encoder["DECODE_THREADS"], int) and image_encoder["DECODE_THREADS"] > 0),
        "['IMAGE_ENCODER']['DECODE_THREADS'] must be None or a positive int.")
    device = image_encoder["DEVICE"]
    _require(device is None or (isinstance(device, str) and device.split(":")[0] in ("cpu", "cuda", "mps")),
             "['IMAGE_ENCODER']['DEVICE'] must be None, 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    _require(image_encoder["PRECISION"] in ("fp32", "fp16", "bf16"),
             "['IMAGE_ENCODER']['PRECISION'] must be fp32, fp16 or bf16.")
    on_cpu_only = image_encoder["BACKEND"] != "torch" or image_encoder["QUANTIZE"]
    _require(device in (None, "cpu") or not on_cpu_only,
             "['IMAGE_ENCODER']['DEVICE'] other than 'cpu' needs BACKEND 'torch' and QUANTIZE False "
             "(int8 quantisation and the ONNX graph run on the CPU).")
    prefetch = image_encoder["PREFETCH_BATCHES"]
    _require(isinstance(prefetch, int) and 0 <= prefetch <= 8,
             "['IMAGE_ENCODER']['PREFETCH_BATCHES'] must be an int 0..8.")
    text = values["TEXT_ENCODER"]
    _require(isinstance(text["CACHE_SIZE"], int) and text["CACHE_SIZE"] >= 0,
             "['TEXT_ENCODER']['CACHE_SIZE'] must be an int >= 0.")
    _require(text["GRAPH_CACHE"] is None or isinstance(text["GRAPH_CACHE"], (str, os.PathLike)),
             "['TEXT_ENCODER']['GRAPH_CACHE'] must be None or a folder path.")
    image = values["IMAGE"]
    for key in ("MAX_BYTES", "MAX_PIXELS"):
        _require(isinstance(image[key], int) and image[key] > 0,
                 f"['IMAGE'][{key!r}] must be a positive int.")
    _require("EPS" not in [f.upper() for f in image["FORMATS"]],
             "['IMAGE']['FORMATS'] must not allow EPS: Pillow runs Ghostscript to open it.")
    hnsw = values["HNSW"]
    _require(isinstance(hnsw["M"], int) and 2 <= hnsw["M"] <= 100, "['HNSW']['M'] must be 2..100.")
    _require(isinstance(hnsw["EF_CONSTRUCTION"], int) and hnsw["EF_CONSTRUCTION"] >= 2 * hnsw["M"],
             "['HNSW']['EF_CONSTRUCTION'] must be an int >= 2 * M.")
    search = values["SEARCH"]
    _require(isinstance(search["RRF_K"], (int, float)) and search["RRF_K"] > 0,
             "['SEARCH']['RRF_K'] must be a positive number.")
    for leg in ("vector", "fulltext", "keyword"):
        _require(isinstance(search["DEPTH"].get(leg), int) and search["DEPTH"][leg] > 0,
                 f"['SEARCH']['DEPTH'][{leg!r}] must be a positive int.")
        _require(isinstance(search["WEIGHTS"].get(leg), (int, float)) and search["WEIGHTS"][leg] >= 0,
                 f"['SEARCH']['WEIGHTS'][{leg!r}] must be a number >= 0.")
    _require(isinstance(search["LIMIT"], int) and 1 <= search["LIMIT"] <= 10_000,
             "['SEARCH']['LIMIT'] must be 1..10000.")
    _require(isinstance(search["EF_SEARCH"], int) and 1 <= search["EF_SEARCH"] <= 1000,
             "['SEARCH']['EF_SEARCH'] must be 1..1000.")
    _require(search["ITERATIVE_SCAN"] in ("off", "relaxed_order", "strict_order"),
             "['SEARCH']['ITERATIVE_SCAN'] must be off, relaxed_order or strict_order.")
    for key in ("FLOOR", "WINDOW"):
        value = search["RELEVANCE"][key]
        _require(value is None or value == "auto" or (isinstance(value, (int, float)) and -1 <= value <= 2),
                 f"['SEARCH']['RELEVANCE'][{key!r}] must be \"auto\", a number or None.")
    typos = search["TYPOS"]
    _require(isinstance(typos["ENABLED"], bool), "['SEARCH']['TYPOS']['ENABLED'] must be a bool.")
    _require(isinstance(typos["ONE_TYPO"], int) and isinstance(typos["TWO_TYPOS"], int)
             and 1 <= typos["ONE_TYPO"] <= typos["TWO_TYPOS"],
             "['SEARCH']['TYPOS'] needs ints with 1 <= ONE_TYPO <= TWO_TYPOS.")
    cache_seconds = search["SYNONYMS_CACHE_SECONDS"]
    _require(isinstance(cache_seconds, (int, float)) and cache_seconds >= 0,
             "['SEARCH']['SYNONYMS_CACHE_SECONDS'] must be a number >= 0.")
    _require(isinstance(values["LEXICON"]["REFRESH_AFTER"], int) and values["LEXICON"]["REFRESH_AFTER"] >= 0,
             "['LEXICON']['REFRESH_AFTER'] must be an int >= 0.")
    suggest = values["SUGGEST"]
    _require(isinstance(suggest["LIMIT"], int) and isinstance(suggest["MAX_LIMIT"], int)
             and 1 <= suggest["LIMIT"] <= suggest["MAX_LIMIT"] <= 100,
             "['SUGGEST'] needs ints with 1 <= LIMIT <= MAX_LIMIT <= 100.")
    _require(isinstance(suggest["EMPTY_KINDS"], (list, tuple)), "['SUGGEST']['EMPTY_KINDS'] must be a list.")
    calibration = values["CALIBRATION"]
    for key in ("NOISE_QUERIES", "TITLE_QUERIES"):
        _require(isinstance(calibration[key], int) and 10 <= calibration[key] <= 10_000,
                 f"['CALIBRATION'][{key!r}] must be 10..10000.")
    for key in ("NOISE_QUANTILE", "TITLE_QUANTILE"):
        _require(isinstance(calibration[key], float) and 0.5 <= calibration[key] <= 1.0,
                 f"['CALIBRATION'][{key!r}] must be a float in 0.5..1.")
    drift = calibration["RECALIBRATE_AFTER"]
    _require(isinstance(drift, (int, float)) and drift > 0,
             "['CALIBRATION']['RECALIBRATE_AFTER'] must be a positive number.")
    log = values["SEARCH_LOG"]
    _require(isinstance(log["ENABLED"], bool), "['SEARCH_LOG']['ENABLED'] must be a bool.")
    for key in ("RETENTION_DAYS", "RESULTS_KEPT"):
        _require(isinstance(log[key], int) and log[key] >= 1, f"['SEARCH_LOG'][{key!r}] must be an int >= 1.")
    moderation = values["MODERATION"]
    _require(isinstance(moderation["CATEGORIES"], dict), "['MODERATION']['CATEGORIES'] must be a dict.")
    for name, category in moderation["CATEGORIES"].items():
        where = f"['MODERATION']['CATEGORIES'][{name!r}]"
        _require(isinstance(category, dict) and set(category) == {"PROMPTS", "THRESHOLD"},
                 f"{where} must be a dict with PROMPTS and THRESHOLD.")
        _require(bool(category["PROMPTS"]) and all(isinstance(p, str) for p in category["PROMPTS"]),
                 f"{where}['PROMPTS'] must be a non-empty list of strings.")
        _require(isinstance(category["THRESHOLD"], (int, float)) and 0 < category["THRESHOLD"] <= 1,
                 f"{where}['THRESHOLD'] must be in (0, 1].")
    _require(bool(moderation["SAFE_PROMPTS"]), "['MODERATION']['SAFE_PROMPTS'] must not be empty.")
    _require(0.0 <= moderation["SAMPLE_RATE"] <= 1.0, "['MODERATION']['SAMPLE_RATE'] must be 0..1.")
    _validate_tagging(values["TAGGING"])


def _validate_tagging(tagging: dict[str, Any]) -> None:
    _require(isinstance(tagging["SETS"], dict), "['TAGGING']['SETS'] must be a dict.")
    _require(_prompts_ok(tagging["PROMPTS"]), "['TAGGING']['PROMPTS'] must be a non-empty list of "
             "strings, each with one {} for the label.")
    _require(_probability(tagging["MIN_CONFIDENCE"]), "['TAGGING']['MIN_CONFIDENCE'] must be in 0..1.")
    _require(tagging["DOCUMENT_WEIGHT"] in (None, "A", "B", "C", "D"),
             "['TAGGING']['DOCUMENT_WEIGHT'] must be A, B, C, D or None.")
    _require(isinstance(tagging["AFTER_EMBED"], bool), "['TAGGING']['AFTER_EMBED'] must be a bool.")
    for name, options in tagging["SETS"].items():
        where = f"['TAGGING']['SETS'][{name!r}]"
        _require(isinstance(name, str) and 0 < len(name) <= 64, f"{where}: a set's name is 1..64 characters.")
        _require(isinstance(options, dict) and "LABELS" in options
                 and set(options) <= {"LABELS", "PROMPTS", "MIN_CONFIDENCE"},
                 f"{where} must be a dict with LABELS, and optionally PROMPTS and MIN_CONFIDENCE.")
        problem = None if isinstance(options["LABELS"], str) else labels_problem(options["LABELS"])
        _require(problem is None, f"{where}['LABELS'] {problem}")
        _require("PROMPTS" not in options or _prompts_ok(options["PROMPTS"]),
                 f"{where}['PROMPTS'] must be a non-empty list of strings, each with one {{}} for the label.")
        _require("MIN_CONFIDENCE" not in options or _probability(options["MIN_CONFIDENCE"]),
                 f"{where}['MIN_CONFIDENCE'] must be in 0..1.")


def labels_problem(labels: Any) -> str | None:
    """What is wrong with a label set's labels (a list, or a dict of labels to the words that
    fill the prompts), or None. Also applied to what a LABELS callable returns."""
    if isinstance(labels, dict):
        names, words = list(labels), list(labels.values())
    elif isinstance(labels, (list, tuple)):
        names, words = list(labels), []
    else:
        return "must be a list of labels, a dict of labels to their words, or the import path of a callable."
    if not names or not all(isinstance(n, str) and 0 < len(n.strip()) and len(n) <= 200 for n in names):
        return "needs labels: non-empty strings of at most 200 characters."
    if len(set(names)) != len(names):
        return "names a label twice."
    if not all(isinstance(w, (list, tuple)) and w and all(isinstance(x, str) and x for x in w)
               for w in words):
        return "maps each label to a non-empty list of words (strings)."
    return None


def _prompts_ok(prompts: Any) -> bool:
    return (isinstance(prompts, (list, tuple)) and bool(prompts)
            and all(isinstance(p, str) and p.count("{}") == 1 for p in prompts))


def _probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


class ClipSearchSettings:
    """Attribute access to the merged, validated settings: ``clip_settings.SEARCH["RRF_K"]``."""

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None

    @property
    def values(self) -> dict[str, Any]:
        if self._values is None:
            user = getattr(settings, "CLIP_SEARCH", {}) or {}
            if not isinstance(user, dict):
                raise ImproperlyConfigured("CLIP_SEARCH must be a dict.")
            values = _merge(DEFAULTS, user, "")
            validate(values)
            self._values = values
        return self._values

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown clip_search setting {name!r}")
        return self.values[name]

    def reload(self) -> None:
        self._values = None


clip_settings = ClipSearchSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "CLIP_SEARCH":
        clip_settings.reload()


setting_changed.connect(_reload)
