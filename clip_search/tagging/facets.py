"""A facet over the staff-accepted tags of one label set: ``{"colour": {"tags": "colour"}}``.

It behaves as a ``terms`` facet (its values are the set's labels; ``?colour=red`` selects them,
repeated for any of several) but reads ``ProductTag`` rows instead of a field of the shop's
model, which cannot hold them. Only accepted tags count: a suggestion is not yet a fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models import CharField, Count, Exists, OuterRef, Q
from django.db.models.functions import Cast

from clip_search.conf import clip_settings
from clip_search.facets import Facet
from clip_search.models import ProductTag


@dataclass(frozen=True)
class TagFacet(Facet):
    """``field`` holds the label set's name; ``model`` is the registered model faceted."""

    model: type[models.Model] | None = None

    def q(self, selected: list[Any]) -> Q:
        """Products with an accepted tag of any selected label."""
        tags = self._accepted(self.model._default_manager.db).filter(
            label__in=selected, object_pk=Cast(OuterRef("pk"), CharField()))
        return Q(Exists(tags))

    def count_values(self, hits: models.QuerySet, chosen: list[Any]) -> list[dict[str, Any]]:
        keys = hits.annotate(clip_key=Cast("pk", CharField())).values("clip_key")
        rows = (self._accepted(hits.db).filter(object_pk__in=keys).values("label")
                .annotate(hits=Count("object_pk", distinct=True)).order_by("-hits", "label")[:self.size])
        values = [{"value": row["label"], "label": row["label"], "count": row["hits"],
                   "selected": row["label"] in chosen} for row in rows]
        listed = {row["label"] for row in rows}  # a chosen label no hit has still shows, to unchoose it
        return values + [{"value": label, "label": label, "count": 0, "selected": True}
                         for label in chosen if label not in listed]

    def _accepted(self, using: str) -> models.QuerySet:
        content_type = ContentType.objects.db_manager(using).get_for_model(self.model,
                                                                           for_concrete_model=False)
        return ProductTag.objects.using(using).filter(content_type=content_type, label_set=self.field,
                                                      status=ProductTag.Status.ACCEPTED)


def tag_facet(model: type[models.Model], name: str, option: Mapping[str, Any]) -> TagFacet:
    """The facet of ``{"tags": "<label set>", "title": ..., "size": ...}``; ImproperlyConfigured
    names a set the settings do not have, or an option a tag facet does not take."""
    where = f"facet {name!r}"
    unknown = set(option) - {"tags", "title", "size"}
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown option(s) {', '.join(sorted(unknown))} (a tag facet "
                                   "takes tags, title and size).")
    label_set = option["tags"]
    if label_set not in clip_settings.TAGGING["SETS"]:
        raise ImproperlyConfigured(f"{where}: CLIP_SEARCH['TAGGING']['SETS'] has no label set {label_set!r}.")
    return TagFacet(name=name, field=label_set, label=None, title=str(option.get("title") or name),
                    kind="terms", size=int(option.get("size", 20)), model=model)
