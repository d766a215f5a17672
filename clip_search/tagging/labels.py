"""The shop's label sets, and their labels scored against image vectors the way the model scores.

A label's vector is a prompt ensemble: every prompt template filled with each of the label's
words ("a photo of a {}" × "t-shirt", "tee"), embedded, averaged and normalised again
(``zeroshot.ensemble``). Probabilities come from ``zeroshot.probabilities`` over the set's labels:
a softmax with the model's logit scale for CLIP (the labels of a set compete: a product is one
colour), an independent sigmoid with the model's bias for SigLIP.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from clip_search.conf import clip_settings, labels_problem
from clip_search.models import EncoderModel
from clip_search.zeroshot import ensemble, probabilities


@dataclass(frozen=True)
class LabelSet:
    """One of ``TAGGING["SETS"]``, its defaults filled in and a LABELS callable called."""

    name: str
    labels: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]  # per label, what fills the prompts (the label itself by default)
    prompts: tuple[str, ...]
    min_confidence: float

    def words_of(self, label: str) -> tuple[str, ...]:
        return self.words[self.labels.index(label)] if label in self.labels else ()


def label_sets(names: Iterable[str] | None = None) -> list[LabelSet]:
    """The configured sets (all, or those named), in the settings' order. ImproperlyConfigured
    for an unknown name or a LABELS callable that cannot be imported or returns no labels."""
    options = clip_settings.TAGGING
    configured = options["SETS"]
    wanted = list(configured) if names is None else list(names)
    unknown = [name for name in wanted if name not in configured]
    if unknown:
        known = ", ".join(configured) or "none"
        raise ImproperlyConfigured(f"CLIP_SEARCH['TAGGING']['SETS'] has no set "
                                   f"{', '.join(map(repr, unknown))} (known: {known}).")
    sets = []
    for name in wanted:
        option = configured[name]
        labels = _called(option["LABELS"], name)
        pairs = labels.items() if isinstance(labels, dict) else ((label, [label]) for label in labels)
        names_, words = zip(*((label, tuple(w)) for label, w in pairs), strict=True)
        sets.append(LabelSet(name=name, labels=tuple(names_), words=tuple(words),
                             prompts=tuple(option.get("PROMPTS", options["PROMPTS"])),
                             min_confidence=float(option.get("MIN_CONFIDENCE", options["MIN_CONFIDENCE"]))))
    return sets


def _called(labels: object, name: str) -> list | dict:
    """LABELS as given, or what the callable at that import path returns, checked alike."""
    if isinstance(labels, str):
        where = f"CLIP_SEARCH['TAGGING']['SETS'][{name!r}]['LABELS']"
        try:
            labels = import_string(labels)()
        except ImportError as error:
            raise ImproperlyConfigured(f"{where}: {error}") from error
        labels = labels if isinstance(labels, dict) else list(labels)  # a queryset's values_list, say
        problem = labels_problem(labels)
        if problem:
            raise ImproperlyConfigured(f"{where}: what the callable returned {problem}")
    return labels


class Tagger:
    """Scores product vectors of one encoder against label sets (label vectors built once)."""

    def __init__(self, encoder: EncoderModel, sets: list[LabelSet]) -> None:
        text_encoder = _text_encoder(encoder)
        self.encoder = encoder
        self.sets = sets
        self.logit_scale = text_encoder.clip.logit_scale
        self.logit_bias = text_encoder.clip.logit_bias
        self._vectors = {label_set.name: label_vectors(text_encoder, label_set) for label_set in sets}

    def score(self, vectors: np.ndarray) -> list[dict[str, list[tuple[str, float]]]]:
        """Per product vector (rows of ``vectors``, L2-normalised): per set, every label with its
        probability, most probable first."""
        scored: list[dict[str, list[tuple[str, float]]]] = [{} for _ in range(len(vectors))]
        for label_set in self.sets:
            cosines = np.asarray(vectors, dtype=np.float64) @ self._vectors[label_set.name].T
            for row, probability in zip(scored, probabilities(cosines, self.logit_scale, self.logit_bias),
                                        strict=True):
                order = np.argsort(-probability, kind="stable")
                row[label_set.name] = [(label_set.labels[i], float(probability[i])) for i in order]
        return scored


_cache: dict[tuple[str, LabelSet], np.ndarray] = {}
_cache_lock = threading.Lock()
_CACHE_SETS = 256


def label_vectors(text_encoder, label_set: LabelSet) -> np.ndarray:
    """(labels, dimension) prompt-ensembled label vectors, float64; cached per weights and set
    (a set of 50 labels × 3 prompts is 150 texts: seconds on a full-size model's CPU)."""
    key = (text_encoder.clip.fingerprint, label_set)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    vectors = np.vstack([
        ensemble(np.asarray(text_encoder.encode([prompt.format(word) for word in words
                                                 for prompt in label_set.prompts]), dtype=np.float64))
        for words in label_set.words])
    with _cache_lock:
        if len(_cache) >= _CACHE_SETS:
            _cache.clear()
        _cache[key] = vectors
    return vectors


def _text_encoder(encoder: EncoderModel):
    """The process's text encoder of these weights (the worker's and the web's alike)."""
    from clip_search.encoders import get_text_encoder
    from clip_search.indexing import spec_for

    text_encoder = get_text_encoder(spec_for(encoder), encoder.fingerprint)
    if text_encoder.clip.fingerprint != encoder.fingerprint:
        raise RuntimeError(f"the weights of {encoder.name!r} changed since they were indexed")
    return text_encoder
