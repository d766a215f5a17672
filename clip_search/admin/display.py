"""What the admin pages show of a product's index row: status badges, thumbnails, the evidence
of each search leg, the product behind a row. Shared by the catalog's changelist, the review
queue and the product tags."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import CharField, JSONField, OuterRef, Subquery, Value
from django.db.models.functions import Cast, JSONObject
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from clip_search.conf import clip_settings
from clip_search.indexing import active_encoder
from clip_search.models import Embedding
from clip_search.registry import registry
from clip_search.search import LEGS, SearchInfo

logger = logging.getLogger(__name__)

# The annotation that carries each changelist row's embedding status, error and stale flag.
STATUS_ANNOTATION = "clip_search_row"
# The annotation that carries the changelist's search term to the per-row explain link.
QUERY_ANNOTATION = "clip_search_query"

# Short badge texts, so the status column stays narrow in a busy changelist.
BADGE_LABELS = {
    Embedding.Status.PENDING: _("pending"),
    Embedding.Status.INDEXED: _("indexed"),
    Embedding.Status.FLAGGED: _("flagged"),
    Embedding.Status.REJECTED: _("rejected"),
    Embedding.Status.NO_IMAGE: _("no image"),
    Embedding.Status.ERROR: _("error"),
}

LEG_LABELS = {
    "vector": _("CLIP vector"),
    "fulltext": _("full text"),
    "keyword": _("keyword (SKU, brand)"),
}


# --------------------------------------------------------------------------- shared helpers


def status_annotation(model: type[models.Model]) -> Subquery | Value:
    """One correlated subquery giving each row its active embedding's status, error and stale flag.

    ``object_pk`` is text (any primary key type fits), so the shop's pk is cast to compare:
    the unique (content type, object pk, encoder) index answers it per row, no N+1.
    """
    encoder = active_encoder()
    if encoder is None:
        return Value(None, output_field=JSONField())
    rows = Embedding.objects.filter(
        content_type=ContentType.objects.get_for_model(model, for_concrete_model=False),
        encoder=encoder, object_pk=Cast(OuterRef("pk"), CharField()))
    row = JSONObject(status="status", error="error", stale="stale")
    return Subquery(rows.values(row=row)[:1], output_field=JSONField())


def thumbnail(url: str | None, alt: str, size: int = 48) -> SafeString | str:
    if not url:
        return "—"
    return format_html('<img src="{}" alt="{}" class="clip-thumb" width="{}" height="{}" loading="lazy">',
                       url, alt, size, size)


def status_badge(status: str | None, error: str = "", stale: bool = False) -> SafeString:
    """A coloured badge; the error (why it failed, or why it is stale) is its tooltip."""
    if not status:
        return format_html('<span class="clip-status clip-status-missing">{}</span>', _("not embedded"))
    label = BADGE_LABELS.get(status, status)
    stale_class = " clip-status-stale" if stale else ""
    suffix = format_html(" ({})", _("stale")) if stale else ""
    return format_html('<span class="clip-status clip-status-{}{}" title="{}">{}{}</span>',
                       status, stale_class, error, label, suffix)


def admin_change_url(obj: models.Model, site_name: str = admin.site.name) -> str | None:
    """The admin change page of any object, or None when its model has no admin here."""
    opts = obj._meta
    try:
        return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)],
                       current_app=site_name)
    except NoReverseMatch:
        return None


ProductKey = tuple[int, str]  # (content type id, object pk)


def products_for(keys: Iterable[ProductKey]) -> dict[ProductKey, models.Model]:
    """The shop objects behind clip_search rows, one query per content type (for list pages)."""
    wanted: dict[int, set[str]] = defaultdict(set)
    for content_type_id, object_pk in keys:
        wanted[content_type_id].add(object_pk)
    found: dict[tuple[int, str], models.Model] = {}
    for content_type_id, pks in wanted.items():
        model = ContentType.objects.get_for_id(content_type_id).model_class()
        if model is None:
            continue
        for obj in model._default_manager.filter(pk__in=sorted(pks)):
            found[(content_type_id, str(obj.pk))] = obj
    return found


def explain_legs(info: SearchInfo, explanation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per leg: whether it ran (or why not), the product's rank, raw measures and RRF share."""
    options = clip_settings.SEARCH
    rows = []
    for leg in LEGS:
        detail = (explanation or {}).get(leg)
        weight = float(options["WEIGHTS"][leg])
        rows.append({
            "label": LEG_LABELS[leg], "ran": leg in info.legs, "why_not": info.degraded.get(leg, ""),
            "depth": options["DEPTH"][leg], "weight": weight,
            "rank": detail["rank"] if detail else None,
            "measures": _measures(leg, detail) if detail else [],
            "contribution": weight / (options["RRF_K"] + detail["rank"]) if detail else None,
        })
    return rows


def _measures(leg: str, detail: dict[str, Any]) -> list[tuple[str, str]]:
    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.4f}"

    if leg == "vector":
        distance = detail["cosine_distance"]
        return [(_("cosine distance"), number(distance)), (_("cosine similarity"), number(1 - distance))]
    if leg == "fulltext":
        return [(_("ts_rank"), number(detail["ts_rank"]))]
    return [(_("exact match"), _("yes") if detail["exact"] else _("no")),
            (_("trigram word similarity"), number(detail["similarity"]))]


# --------------------------------------------------------------------------- forms


# --------------------------------------------------------------------------- rows about a product


class ProductChangeList(ChangeList):
    """Resolves every product on the page in one query per model (``ProductColumns``)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        rows = list(self.result_list)
        products = products_for(self.model_admin.product_key(row) for row in rows)
        for row in rows:
            row.clip_product = products.get(self.model_admin.product_key(row))


class ProductColumns:
    """Columns of an admin whose rows are about one shop product (a review item, a tag): its
    picture and its name, linked to the product's own admin page."""

    preview_size = 64
    large_preview_size = 256

    def product_key(self, row: models.Model) -> ProductKey:
        raise NotImplementedError

    def product_image_url(self, row: models.Model, product: models.Model, registration: Any) -> str | None:
        """The picture to show: the product's first by default."""
        return registration.image_url(product)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ProductChangeList

    def _product(self, row: models.Model) -> models.Model | None:
        if not hasattr(row, "clip_product"):  # the change page: a single row
            row.clip_product = products_for([self.product_key(row)]).get(self.product_key(row))
        return row.clip_product

    def _preview(self, row: models.Model, size: int) -> SafeString | str:
        product = self._product(row)
        if product is None or not registry.is_registered(type(product)):
            return "—"
        url = self.product_image_url(row, product, registry.get(type(product)))
        return thumbnail(url, str(product), size)

    @admin.display(description=_("image"))
    def preview(self, row: models.Model) -> SafeString | str:
        return self._preview(row, self.preview_size)

    @admin.display(description=_("image"))
    def large_preview(self, row: models.Model) -> SafeString | str:
        return self._preview(row, self.large_preview_size)

    @admin.display(description=_("product"))
    def product(self, row: models.Model) -> str:
        product = self._product(row)
        if product is None:
            return str(_("deleted (%(pk)s)") % {"pk": self.product_key(row)[1]})
        return str(product)

    @admin.display(description=_("product"))
    def product_link(self, row: models.Model) -> SafeString | str:
        product = self._product(row)
        url = product is not None and admin_change_url(product, self.admin_site.name)
        return format_html('<a href="{}">{}</a>', url, product) if url else self.product(row)
