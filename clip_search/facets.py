"""Facets: counts of a search's hits per value of the fields a shop declares, and the filters
that select one.

A shop declares them (``CLIP_SEARCH_API["FACETS"]``, or ``declared(...)`` from its own code)::

    {"category": {"field": "category__slug", "label": "category__name", "title": _("Category")},
     "brand": {"field": "brand__name"},
     "price": {"field": "price", "ranges": [[None, 25], [25, 50], [50, 100], [100, None]]},
     "in_stock": {"field": "in_stock"},
     "colour": {"tags": "colour", "title": _("Colour")}}  # staff-accepted tags of a label set

Each facet is also a filter named after it: ``?category=mug`` (repeated: any of them),
``?price=25-50`` (from 25 included to 50 excluded; ``-25`` and ``100-`` are open),
``?in_stock=true``. A selection narrows the hits of the search (the query's own set, found
before any facet was chosen), as search engines do: so a value's count is exactly what
selecting it shows. Counts are taken over the whole hit set, not over a page, narrowed by the
*other* facets' selections (a facet's own choice does not hide its alternatives: picking a
second brand adds its hits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import models
from django.db.models import Count, Q
from django.utils.translation import gettext_lazy as _

from clip_search.expressions import KeyIn
from clip_search.registry import resolve_path

Bound = Decimal | None


@dataclass(frozen=True)
class Facet:
    name: str  # the query parameter that selects a value
    field: str  # the model path counted and filtered
    label: str | None  # a path whose value is shown instead (category__name for category__slug)
    title: str
    kind: str  # terms | range | boolean
    ranges: tuple[tuple[Bound, Bound], ...] = ()
    size: int = 20  # values listed at most, most hits first

    def parse(self, values: Iterable[str]) -> list[Any]:
        """The selected values of a request (ValidationError names a bad one)."""
        parsed = []
        for value in values:
            if self.kind == "range":
                parsed.append(parse_range(value))
            elif self.kind == "boolean":
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValidationError(_("%(value)s is not true or false.") % {"value": value})
                parsed.append(value.lower() in ("true", "1"))
            elif value:
                parsed.append(value)
        return parsed

    def count_values(self, hits: models.QuerySet, chosen: list[Any]) -> list[dict[str, Any]]:
        """Each value with its number of ``hits``, most first (``chosen``: the selected ones)."""
        return _count(hits, self, chosen)

    def q(self, selected: list[Any]) -> Q:
        """The filter of the selected values: any of them."""
        condition = Q()
        for value in selected:
            if self.kind == "range":
                low, high = value
                bounds = {**({f"{self.field}__gte": low} if low is not None else {}),
                          **({f"{self.field}__lt": high} if high is not None else {})}
                condition |= Q(**bounds)
            else:
                condition |= Q(**{self.field: value})
        return condition


RESERVED = {"q", "limit", "offset", "sort", "explain", "highlight", "correct", "format", "version"}


def declared(model: type[models.Model], options: Mapping[str, Mapping[str, Any]]) -> list[Facet]:
    """Facets from their declaration (module docstring); ImproperlyConfigured names a bad one."""
    facets = []
    for name, option in options.items():
        where = f"facet {name!r}"
        if name in RESERVED:
            raise ImproperlyConfigured(f"{where}: the name is a search parameter; choose another.")
        if isinstance(option, Mapping) and "tags" in option:  # accepted tags of a label set
            from clip_search.tagging.facets import tag_facet

            facets.append(tag_facet(model, name, option))
            continue
        if not isinstance(option, Mapping) or "field" not in option:
            raise ImproperlyConfigured(f"{where}: needs a 'field' (or 'tags', a label set).")
        unknown = set(option) - {"field", "label", "title", "ranges", "size"}
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown option(s) {', '.join(sorted(unknown))}.")
        try:
            field, _model, _many = resolve_path(model, option["field"], allow_many=True)
            if option.get("label"):
                resolve_path(model, option["label"], allow_many=True)
        except (ImproperlyConfigured, FieldDoesNotExist) as error:
            raise ImproperlyConfigured(f"{where}: {error}") from None
        ranges = tuple(_bounds(pair, where) for pair in option.get("ranges") or ())
        kind = "range" if ranges else "boolean" if isinstance(field, models.BooleanField) else "terms"
        title = option.get("title") or getattr(field, "verbose_name", name) or name
        facets.append(Facet(name=name, field=option["field"], label=option.get("label"), title=str(title),
                            kind=kind, ranges=ranges, size=int(option.get("size", 20))))
    return facets


def _bounds(pair: Any, where: str) -> tuple[Bound, Bound]:
    try:
        low, high = (None if v is None else Decimal(str(v)) for v in pair)
    except (TypeError, ValueError, InvalidOperation):
        raise ImproperlyConfigured(f"{where}: ranges are [low, high] pairs of numbers or None.") from None
    if low is not None and high is not None and low >= high:
        raise ImproperlyConfigured(f"{where}: range [{low}, {high}] is empty.")
    return low, high


def parse_range(value: str) -> tuple[Bound, Bound]:
    """``25-50`` → (25, 50); ``-25`` and ``100-`` are open at one end."""
    low, dash, high = value.strip().partition("-")
    try:
        bounds = (Decimal(low) if low else None, Decimal(high) if high else None)
    except InvalidOperation:
        bounds = None
    if not dash or bounds is None or bounds == (None, None):
        raise ValidationError(_("%(value)s is not a range such as 25-50, -25 or 100-.") % {"value": value})
    return bounds


def range_value(low: Bound, high: Bound) -> str:
    return f"{'' if low is None else _plain(low)}-{'' if high is None else _plain(high)}"


def _plain(number: Decimal) -> str:
    return format(number.normalize(), "f")


def range_label(low: Bound, high: Bound) -> str:
    if low is None:
        return str(_("Under %(high)s") % {"high": _plain(high)})
    if high is None:
        return str(_("%(low)s and up") % {"low": _plain(low)})
    return f"{_plain(low)}–{_plain(high)}"


def select(facets: list[Facet], params: Mapping[str, list[str]]) -> dict[str, list[Any]]:
    """The values a request selects per facet (``params``: values by name, as
    ``QueryDict.getlist`` gives them); ValidationError maps each facet with a bad value to why."""
    selected, errors = {}, {}
    for facet in facets:
        try:
            values = facet.parse(params.get(facet.name) or [])
        except ValidationError as error:
            errors[facet.name] = error.messages
            continue
        if values:
            selected[facet.name] = values
    if errors:
        raise ValidationError(errors)
    return selected


def narrowing(facets: list[Facet], selected: dict[str, list[Any]], *, leave_out: str | None = None) -> Q:
    """The filter of every selection (but ``leave_out``'s): all facets, any value of each."""
    return Q(*(facet.q(selected[facet.name]) for facet in facets
               if facet.name in selected and facet.name != leave_out))


def count(model: type[models.Model], keys: list[str], facets: list[Facet], selected: dict[str, list[Any]],
          using: str = "default") -> list[dict[str, Any]]:
    """Each facet's values with their number of hits (``keys``) under the other facets' selections."""
    hits = model._default_manager.db_manager(using).filter(KeyIn("pk", keys))
    return [{"name": facet.name, "title": facet.title, "kind": facet.kind,
             "values": facet.count_values(hits.filter(narrowing(facets, selected, leave_out=facet.name)),
                                          selected.get(facet.name, []))}
            for facet in facets]


def _count(hits: models.QuerySet, facet: Facet, chosen: list[Any]) -> list[dict[str, Any]]:
    if facet.kind == "range":
        counts = hits.aggregate(**{f"r{i}": Count("pk", filter=facet.q([bounds]), distinct=True)
                                   for i, bounds in enumerate(facet.ranges)})
        return [{"value": range_value(*bounds), "label": range_label(*bounds), "count": counts[f"r{i}"],
                 "selected": bounds in chosen}
                for i, bounds in enumerate(facet.ranges) if counts[f"r{i}"] or bounds in chosen]
    columns = [facet.field, *([facet.label] if facet.label else [])]
    rows = (hits.exclude(**{f"{facet.field}__isnull": True}).values(*columns)
            .annotate(hits=Count("pk", distinct=True)).order_by("-hits", facet.field)[:facet.size])
    values = []
    for row in rows:
        value = row[facet.field]
        label = row[facet.label] if facet.label else value
        if facet.kind == "boolean":
            text = "true" if value else "false"
            label = _("Yes") if value else _("No")
        else:
            text = str(value)
        values.append({"value": text, "label": str(label), "count": row["hits"],
                       "selected": value in chosen or text in map(str, chosen)})
    # A chosen value no hit has still shows (with its label and 0), so it can be unchosen.
    listed = {value["value"] for value in values}
    for value in chosen:
        text = ("true" if value else "false") if facet.kind == "boolean" else str(value)
        if text not in listed:
            values.append({"value": text, "label": _label(hits.model, facet, value), "count": 0,
                           "selected": True})
    return values


def _label(model: type[models.Model], facet: Facet, value: Any) -> str:
    if facet.kind == "boolean":
        return str(_("Yes") if value else _("No"))
    if not facet.label:
        return str(value)
    label = model._default_manager.filter(**{facet.field: value}).values_list(facet.label, flat=True).first()
    return str(value if label is None else label)
