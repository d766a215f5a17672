"""Offline evaluation of search: recall@k, MRR and nDCG@10 of each leg and of the fusion, with
bootstrap confidence intervals, for an encoder (the active one, or a candidate being filled).

Judgements come from the search log (a logged text search with events is a query; the products
its shopper clicked, put in the cart or bought are its relevant results, with gains 1, 2 and 3)
or from a file, one JSON object per line: ``{"q": "red mug", "rel": {"42": 2, "57": 1}}``.

Clicks are biased by position: a shopper examines the first results more, so the ranker that
was live when they clicked looks better on its own clicks than it is. Two things keep the
comparison honest: judgements are held out by time (the latest searches, never a random
sample of them, so a model trained on the earlier clicks is judged on later ones), and models
are compared on the same queries with a paired bootstrap of their difference.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.db import models

from clip_search.models import EncoderModel, SearchEvent, SearchRecord

GAINS = {SearchEvent.Kind.CLICK: 1.0, SearchEvent.Kind.ADD_TO_CART: 2.0, SearchEvent.Kind.PURCHASE: 3.0}
# Each leg alone (the others' weights at 0) and the fusion.
LEGS: dict[str, dict[str, float]] = {
    "vector": {"fulltext": 0, "keyword": 0},
    "fulltext": {"vector": 0, "keyword": 0},
    "keyword": {"vector": 0, "fulltext": 0},
    "fused": {},
}
MEASURES = ("ndcg@10", "mrr", "recall@k")


@dataclass(frozen=True)
class Judged:
    """A query and its relevant products (pk → gain), with when it was asked and, from the log,
    which search it was and of which registered model ("catalog.product")."""

    query: str
    gains: dict[str, float]
    at: datetime | None = None
    search_id: str | None = None
    model: str = ""


def from_log(content_type_id: int | None = None, *, since: datetime | None = None,
             until: datetime | None = None) -> list[Judged]:
    """Logged text searches with at least one event, oldest first (a product's gain is its best
    event's: a purchase outranks a click)."""
    searches = SearchRecord.objects.filter(kind=SearchRecord.Kind.TEXT, events__isnull=False).distinct()
    if content_type_id is not None:
        searches = searches.filter(content_type_id=content_type_id)
    if since is not None:
        searches = searches.filter(created_at__gte=since)
    if until is not None:
        searches = searches.filter(created_at__lt=until)
    judged = []
    searches = searches.order_by("created_at", "id").select_related("content_type").prefetch_related("events")
    for search in searches:
        gains: dict[str, float] = {}
        for event in search.events.all():
            gains[event.object_pk] = max(gains.get(event.object_pk, 0.0), GAINS.get(event.kind, 1.0))
        model = f"{search.content_type.app_label}.{search.content_type.model}"
        judged.append(Judged(search.corrected_query or search.query, gains, search.created_at, str(search.pk),
                             model))
    return judged


def from_jsonl(path: str | Path) -> list[Judged]:
    """``{"q": ..., "rel": {pk: gain}}`` per line; ValueError names a bad line."""
    judged = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            gains = {str(pk): float(gain) for pk, gain in row["rel"].items()}
            query = str(row["q"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            expected = '{"q": ..., "rel": {pk: gain}}'
            raise ValueError(f"{path}, line {number}: {error!r} (each line: {expected})") from None
        if query.strip() and gains:
            judged.append(Judged(query, gains))
    return judged


def split_by_time(judged: Sequence[Judged], held_out: float) -> tuple[list[Judged], list[Judged]]:
    """(earlier, later): the latest ``held_out`` share of the judgements, by when they were asked."""
    ordered = sorted(judged, key=lambda item: item.at or datetime.min)
    cut = len(ordered) - max(1, round(len(ordered) * held_out)) if ordered else 0
    return ordered[:cut], ordered[cut:]


# --------------------------------------------------------------------------- measures


def dcg(gains: Iterable[float]) -> float:
    return sum((2 ** gain - 1) / math.log2(rank + 2) for rank, gain in enumerate(gains))


def measure(ranked: Sequence[str], gains: dict[str, float], k: int) -> dict[str, float]:
    """nDCG@10 (graded), MRR (first relevant result in the whole ranking) and recall@k."""
    ideal = dcg(sorted(gains.values(), reverse=True)[:10])
    first = next((rank for rank, pk in enumerate(ranked, 1) if pk in gains), None)
    return {
        "ndcg@10": dcg(gains.get(pk, 0.0) for pk in ranked[:10]) / ideal if ideal else 0.0,
        "mrr": 1.0 / first if first else 0.0,
        "recall@k": len(set(ranked[:k]) & set(gains)) / len(gains),
    }


def bootstrap(values: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile interval of the mean (resampling queries with replacement)."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


@dataclass
class Result:
    """Per leg and measure: every query's value (in the judgements' order), its mean and CI."""

    encoder: str
    queries: int
    k: int
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def mean(self, leg: str, name: str) -> float:
        values = self.values[leg][name]
        return sum(values) / len(values) if values else 0.0

    def interval(self, leg: str, name: str) -> tuple[float, float]:
        return bootstrap(self.values[leg][name])

    def table(self) -> list[str]:
        lines = [f"{self.encoder}: {self.queries} queries"]
        for leg in self.values:
            cells = []
            for name in MEASURES:
                low, high = self.interval(leg, name)
                label = name.replace("@k", f"@{self.k}")
                cells.append(f"{label} {self.mean(leg, name):.3f} [{low:.3f}, {high:.3f}]")
            lines.append(f"  {leg:<8} " + "  ".join(cells))
        return lines


def evaluate(judged: Sequence[Judged], queryset: models.QuerySet, *, encoder: EncoderModel | None = None,
             legs: Sequence[str] = tuple(LEGS), k: int = 10, depth: int = 100) -> Result:
    """Search every judged query among ``queryset`` (the storefront's set) with ``encoder`` and
    score each leg's ranking and the fused one."""
    from clip_search.search import search

    encoder = encoder or EncoderModel.objects.get(is_active=True)
    result = Result(encoder=str(encoder), queries=len(judged), k=k,
                    values={leg: {name: [] for name in MEASURES} for leg in legs})
    for item in judged:
        for leg in legs:
            hits = search(queryset, text=item.query, weights=LEGS[leg], encoder=encoder, limit=depth)
            ranked = [str(pk) for pk in hits.values_list("pk", flat=True)]
            for name, value in measure(ranked, item.gains, k).items():
                result.values[leg][name].append(value)
    return result


@dataclass(frozen=True)
class Comparison:
    """A candidate against the active model on the same queries: the mean difference of a
    measure and its paired bootstrap interval."""

    leg: str
    measure: str
    active: float
    candidate: float
    low: float
    high: float

    @property
    def better(self) -> bool:
        """Better beyond chance: the whole 95 % interval of the difference is above 0."""
        return self.low > 0

    def __str__(self) -> str:
        return (f"{self.leg} {self.measure}: active {self.active:.3f}, candidate {self.candidate:.3f}, "
                f"difference {self.candidate - self.active:+.3f} [{self.low:+.3f}, {self.high:+.3f}]")


def compare(active: Result, candidate: Result, *, leg: str = "fused", name: str = "ndcg@10") -> Comparison:
    differences = [c - a for a, c in zip(active.values[leg][name], candidate.values[leg][name], strict=True)]
    low, high = bootstrap(differences)
    return Comparison(leg, name, active.mean(leg, name), candidate.mean(leg, name), low, high)


def gate(candidate: EncoderModel, queryset: models.QuerySet, *, held_out: float = 0.2,
         judged: list[Judged] | None = None) -> Comparison:
    """The candidate against the active model (fused nDCG@10): what ``clip_reindex
    --activate-if-better`` decides on. On ``judged`` queries when given (a judged file), else on
    the latest ``held_out`` share of the logged searches with clicks. ValueError when there is
    nothing to judge on.

    Clicks judge only what the active model showed: a candidate that ranks other relevant
    products first is judged worse than it is (bench/learning_loop.py: −0.056 on held-out clicks
    for a model +0.202 better on the shoppers' true intents). A judged file has no such bias."""
    if judged is None:
        _earlier, judged = split_by_time(from_log(), held_out)
        if not judged:
            raise ValueError("The search log has no searches with clicks to judge the models on.")
    elif not judged:
        raise ValueError("The judged file has no queries.")
    active = EncoderModel.objects.get(is_active=True)
    return compare(evaluate(judged, queryset, encoder=active, legs=("fused",)),
                   evaluate(judged, queryset, encoder=candidate, legs=("fused",)))
