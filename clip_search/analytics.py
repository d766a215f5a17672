"""What the search log says: top and zero-result queries, click-through and reciprocal rank per
query, which search leg found what shoppers clicked, and how it all moves day by day.

Definitions (per search, then averaged over a query's searches):

- **click-through rate**: the share of searches with at least one click;
- **mean reciprocal rank** (MRR): 1 / position of the search's first click, 0 without a click;
- **zero-result rate**: the share of searches that found nothing.

Queries are grouped as typed, case and spacing aside. Everything is one aggregate query over
the period's rows, for the admin's analytics page (``clip_search.admin.analytics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import (
    Avg,
    Case,
    Count,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Lower, TruncDate
from django.utils import timezone

from clip_search.models import SearchEvent, SearchRecord
from clip_search.sql import searchlog as searchlog_sql

LEG_NAMES = {"v": "vector", "f": "full text", "k": "keyword"}


@dataclass(frozen=True)
class Period:
    """Whole days, ``start`` to ``end`` included, in the site's time zone."""

    start: date
    end: date

    @classmethod
    def last(cls, days: int) -> Period:
        today = timezone.localdate()
        return cls(today - timedelta(days=days - 1), today)

    def bounds(self) -> tuple[datetime, datetime]:
        zone = timezone.get_current_timezone()
        return (timezone.make_aware(datetime.combine(self.start, time.min), zone),
                timezone.make_aware(datetime.combine(self.end + timedelta(days=1), time.min), zone))

    def searches(self) -> QuerySet:
        start, end = self.bounds()
        return SearchRecord.objects.filter(created_at__gte=start, created_at__lt=end)


@dataclass(frozen=True)
class QueryStats:
    query: str
    searches: int
    zero_results: int
    clicks: int
    ctr: float
    mrr: float


def _with_first_click(searches: QuerySet) -> QuerySet:
    """Each search with the position of its first click and its number of clicks (subqueries,
    not joins: the measures average over searches, one row each)."""
    clicks = SearchEvent.objects.filter(search=OuterRef("pk"), kind=SearchEvent.Kind.CLICK)
    counted = clicks.order_by().values("search").annotate(n=Count("id")).values("n")
    return searches.annotate(first_click=Subquery(clicks.order_by("position").values("position")[:1]),
                             click_count=Coalesce(Subquery(counted), 0))


def _measures() -> dict:
    def per_search(value) -> Case:
        return Case(When(first_click__isnull=False, then=value), default=Value(0.0),
                    output_field=FloatField())

    reciprocal = per_search(Value(1.0) / Cast(F("first_click"), FloatField()))
    clicked = per_search(Value(1.0))
    return {"searches": Count("id"), "zero_results": Count("id", filter=Q(hits=0)),
            "ctr": Avg(clicked), "mrr": Avg(reciprocal)}


def summary(period: Period) -> dict:
    """The period's totals: searches, distinct sessions, zero-result rate, CTR, MRR, events."""
    searches = _with_first_click(period.searches())
    totals = searches.aggregate(**_measures(), sessions=Count("session", distinct=True))
    events = SearchEvent.objects.filter(search__in=period.searches()).values("kind").annotate(n=Count("id"))
    totals["events"] = {row["kind"]: row["n"] for row in events}
    totals["zero_rate"] = totals["zero_results"] / totals["searches"] if totals["searches"] else 0.0
    totals["ctr"], totals["mrr"] = totals["ctr"] or 0.0, totals["mrr"] or 0.0
    return totals


def top_queries(period: Period, limit: int = 20, *, zero_only: bool = False) -> list[QueryStats]:
    """The most searched queries (``zero_only``: of the searches that found nothing) with their
    click-through rate and MRR."""
    searches = period.searches().filter(kind=SearchRecord.Kind.TEXT)
    if zero_only:
        searches = searches.filter(hits=0)
    rows = (_with_first_click(searches).annotate(normalised=Lower("query")).values("normalised")
            .annotate(**_measures(), clicks=Sum("click_count"))
            .order_by("-searches", "normalised")[:limit])
    return [QueryStats(row["normalised"], row["searches"], row["zero_results"], row["clicks"],
                       row["ctr"] or 0.0, row["mrr"] or 0.0) for row in rows]


def daily(period: Period) -> list[dict]:
    """Per day of the period (days without searches included): searches, zero-result rate, CTR."""
    rows = {row["day"]: row for row in _with_first_click(period.searches())
            .annotate(day=TruncDate("created_at")).values("day").annotate(**_measures())}
    days = []
    day = period.start
    while day <= period.end:
        row = rows.get(day, {"searches": 0, "zero_results": 0, "ctr": 0.0})
        days.append({"day": day, "searches": row["searches"], "ctr": row["ctr"] or 0.0,
                     "zero_rate": row["zero_results"] / row["searches"] if row["searches"] else 0.0})
        day += timedelta(days=1)
    return days


def clicked_by_leg(period: Period) -> list[tuple[str, int]]:
    """Clicks by the legs that had found the clicked result ("vector + full text": 120), most
    first: which part of hybrid search earns the clicks."""
    rows = searchlog_sql.clicks_by_found_by(*period.bounds(), using=SearchRecord.objects.db)
    return [(" + ".join(LEG_NAMES[letter] for letter in letters) or "unknown", count)
            for letters, count in rows]
