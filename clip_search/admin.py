"""The Django admin staff use to search the catalog and review quarantined uploads.

``ClipSearchAdminMixin`` goes in front of the shop's *own* ModelAdmin of a registered model
(``class ProductAdmin(ClipSearchAdminMixin, admin.ModelAdmin)``): the changelist search box
runs hybrid search, the list gets a thumbnail and an embedding-status column, and staff get
search by image, "similar products", an explain page and a re-embed action. The shop's
model and its other admin options stay as they are.

The review queue (``ReviewItem``), the embeddings and the encoder models get admins of their
own, registered on the default admin site.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import update_wrapper
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import model_ngettext, quote, unquote
from django.contrib.admin.views.main import ORDER_VAR, SEARCH_VAR, ChangeList
from django.contrib.auth import get_permission_codename
from django.contrib.contenttypes.models import ContentType
from django.core import checks
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Case, CharField, Count, JSONField, OuterRef, Subquery, Value, When
from django.db.models.functions import Cast, JSONObject
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import select_template
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from clip_search import moderation
from clip_search.conf import clip_settings
from clip_search.imaging import ImageRejected
from clip_search.indexing import active_encoder
from clip_search.models import Embedding, EncoderModel, ImageEmbedding, ReviewDecision, ReviewItem
from clip_search.registry import Registration, registry
from clip_search.search import EXACT_BOOST, LEGS, SearchError, SearchInfo, search
from clip_search.tasks import enqueue

logger = logging.getLogger(__name__)

# The annotation that carries each changelist row's embedding status, error and stale flag.
STATUS_ANNOTATION = "clip_search_row"
# The annotation that carries the changelist's search term to the per-row explain link.
QUERY_ANNOTATION = "clip_search_query"
_MISSING = object()

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


def products_for(embeddings: Iterable[Embedding]) -> dict[tuple[int, str], models.Model]:
    """The shop objects behind embedding rows, one query per content type (for list pages)."""
    wanted: dict[int, set[str]] = defaultdict(set)
    for embedding in embeddings:
        wanted[embedding.content_type_id].add(embedding.object_pk)
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


class ImageSearchForm(forms.Form):
    # A FileField, not an ImageField: clip_search's own safe decoder judges the bytes and
    # says exactly why a file is refused (format, size, pixels, broken).
    image = forms.FileField(label=_("Image"), widget=forms.ClearableFileInput(attrs={"accept": "image/*"}))
    text = forms.CharField(label=_("With words"), required=False, max_length=500,
                           help_text=_("Optional: words to search together with the picture."))


class ExplainForm(forms.Form):
    q = forms.CharField(label=_("Query"), max_length=2000)


# --------------------------------------------------------------------------- the shop's changelist


class SearchChangeList(ChangeList):
    """Keeps the fused-score order unless staff sort by a column; fetches row statuses in-query."""

    def _is_hybrid(self, queryset: models.QuerySet) -> bool:
        return getattr(queryset, "search_info", None) is not None and not self.params.get(ORDER_VAR)

    def get_ordering(self, request: HttpRequest, queryset: models.QuerySet) -> list:
        # Django < 5.0 orders after searching: keep the score order there too.
        if self._is_hybrid(queryset):
            return ["search_rank"]
        return super().get_ordering(request, queryset)

    def get_ordering_field_columns(self) -> dict[int, str]:
        # Ordered by score: no column header should claim to be the sort key.
        if self._is_hybrid(getattr(self, "queryset", None)):
            return {}
        return super().get_ordering_field_columns()

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> models.QuerySet:
        queryset = super().get_queryset(request, *args, **kwargs)
        facet_count = bool(args or kwargs.get("exclude_parameters"))
        if facet_count or not self.model_admin.clip_search_columns or not registry.is_registered(self.model):
            return queryset
        queryset = queryset.annotate(**{STATUS_ANNOTATION: status_annotation(self.model)})
        registration = registry.get(self.model)  # the thumbnails' images, in few queries
        return queryset.select_related(*registration.related_paths()).prefetch_related(
            *registration.prefetch_paths())


class ClipSearchAdminMixin:
    """Hybrid search, image search, similar products and re-embedding in the shop's ModelAdmin.

    Put it first: ``class ProductAdmin(ClipSearchAdminMixin, admin.ModelAdmin)``. A shop that
    sets its own ``change_list_template`` should extend ``admin/clip_search/change_list.html``.
    """

    change_list_template = "admin/clip_search/change_list.html"
    search_help_text = _("Hybrid search: words, colours, SKUs and brands; best matches first.")
    # Add the thumbnail, score (when searching) and status-with-links columns to list_display.
    clip_search_columns = True
    # Changelist hits (None: CLIP_SEARCH["SEARCH"]["LIMIT"]) and rows on the image/similar pages.
    clip_search_limit: int | None = None
    clip_search_results_limit = 48

    # ----------------------------------------------------------------- wiring

    @property
    def clip_registration(self) -> Registration:
        return registry.get(self.model)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        if not registry.is_registered(self.model) and not registry.errors:
            errors.append(checks.Error(
                f"{type(self).__name__} uses ClipSearchAdminMixin but {self.model._meta.label} is not "
                "registered with clip_search.", hint="Call clip_search.register() for it.",
                obj=type(self), id="clip_search.E101"))
        return errors

    def get_urls(self) -> list:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        urls = [
            path("clip-search/image/", self._clip_view(self.clip_image_search_view),
                 name=f"{prefix}_clip_image_search"),
            path("<path:object_id>/clip-similar/", self._clip_view(self.clip_similar_view),
                 name=f"{prefix}_clip_similar"),
            path("<path:object_id>/clip-explain/", self._clip_view(self.clip_explain_view),
                 name=f"{prefix}_clip_explain"),
        ]
        return urls + super().get_urls()  # before the catch-all <path:object_id>/ redirect

    def _clip_view(self, view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        """Staff only (admin_view) and only with the model's view permission."""
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not self.has_view_permission(request):
                raise PermissionDenied
            request.current_app = self.admin_site.name
            return view(request, *args, **kwargs)

        return self.admin_site.admin_view(update_wrapper(wrapper, view))

    def _clip_url(self, name: str, *args: Any, query: dict[str, str] | None = None) -> str:
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}",
                      args=[quote(a) for a in args], current_app=self.admin_site.name)
        return f"{url}?{urlencode(query)}" if query else url

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SearchChangeList

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        context = {
            "clip_search_parent_template": self._clip_parent_template(),
            "clip_image_search_url": self._clip_url("clip_image_search"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def _clip_parent_template(self) -> str:
        """The changelist template Django would have used, so per-model overrides still apply."""
        names = [f"admin/{self.opts.app_label}/{self.opts.model_name}/change_list.html",
                 f"admin/{self.opts.app_label}/change_list.html", "admin/change_list.html"]
        return select_template(names).template.name

    # ----------------------------------------------------------------- changelist search

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        """Django's fallback search needs fields; default to the registered text and keywords."""
        fields = super().get_search_fields(request)
        if fields or not registry.is_registered(self.model):
            return fields
        return self.clip_registration.paths()

    def get_search_results(self, request: HttpRequest, queryset: models.QuerySet,
                           search_term: str) -> tuple[models.QuerySet, bool]:
        """Hybrid search over the filtered changelist; Django's own search when it finds nothing."""
        term = search_term.strip()
        if not term or not registry.is_registered(self.model):
            return super().get_search_results(request, queryset, search_term)
        results = search(queryset, text=term, include_quarantined=True, limit=self.clip_search_limit)
        info = results.search_info
        if self._is_changelist(request):
            self._clip_report(request, info)
        if not info.hits:
            return super().get_search_results(request, queryset, search_term)
        if request.GET.get(ORDER_VAR) and queryset.query.order_by:
            results = results.order_by(*queryset.query.order_by)  # staff sorted by a column
        results = results.annotate(**{QUERY_ANNOTATION: Value(info.query, output_field=CharField())})
        return results, False

    def _is_changelist(self, request: HttpRequest) -> bool:
        match = request.resolver_match
        return bool(match) and match.url_name == f"{self.opts.app_label}_{self.opts.model_name}_changelist"

    def _clip_report(self, request: HttpRequest, info: SearchInfo) -> None:
        """Tell staff when search could not use every leg, instead of silently showing less.

        Once per request: facet counts run the search again for every filter.
        """
        if getattr(request, "_clip_search_reported", False):
            return
        request._clip_search_reported = True
        if info.degraded and not info.legs:
            reasons = "; ".join(dict.fromkeys(info.degraded.values()))
            messages.info(request, _("Hybrid search is not available (%(reason)s); the plain admin "
                                     "search answered.") % {"reason": reasons})
        elif info.degraded:
            messages.warning(request, _("Search is degraded: %(reasons)s Results come from: %(legs)s.") % {
                "reasons": " ".join(info.degraded.values()),
                "legs": ", ".join(str(LEG_LABELS[leg]) for leg in info.legs)})
        if info.truncated:
            messages.info(request, _("The query was cut to %(limit)d characters.") % {
                "limit": clip_settings.SEARCH["MAX_QUERY_LENGTH"]})

    # ----------------------------------------------------------------- columns

    def get_list_display(self, request: HttpRequest) -> list:
        display = list(super().get_list_display(request))
        if not self.clip_search_columns or not registry.is_registered(self.model):
            return display
        front = ["clip_thumbnail"]
        back = ["clip_score"] if request.GET.get(SEARCH_VAR, "").strip() else []
        back.append("clip_status")
        return [*(c for c in front if c not in display), *display, *(c for c in back if c not in display)]

    def get_list_display_links(self, request: HttpRequest, list_display: list) -> list | None:
        links = super().get_list_display_links(request, list_display)
        if links is not None and list(links) == ["clip_thumbnail"] and len(list_display) > 1:
            return [list_display[1]]  # the shop's first column stays the link, as before
        return links

    @admin.display(description=_("image"))
    def clip_thumbnail(self, obj: models.Model) -> SafeString | str:
        return thumbnail(self.clip_registration.image_url(obj), str(obj), 40)

    @admin.display(description=_("embedding"))
    def clip_status(self, obj: models.Model) -> SafeString:
        """The status badge, and under it the similar (and, when searching, explain) links."""
        row = getattr(obj, STATUS_ANNOTATION, _MISSING)
        if row is _MISSING:  # not from the changelist: one query for this object
            row = embedding = getattr(obj, "clip_embedding", None)
            if embedding is not None:
                row = {"status": embedding.status, "error": embedding.error, "stale": embedding.stale}
        row = row or {}
        badge = status_badge(row.get("status"), row.get("error") or "", bool(row.get("stale")))
        return format_html('{}<div class="clip-links">{}</div>', badge, self._clip_links(obj))

    def _clip_links(self, obj: models.Model) -> SafeString:
        links = [(self._clip_url("clip_similar", obj.pk), _("similar"))]
        query = getattr(obj, QUERY_ANNOTATION, None)
        if query:
            links.append((self._clip_url("clip_explain", obj.pk, query={"q": query}), _("explain")))
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    @admin.display(description=_("score"))
    def clip_score(self, obj: models.Model) -> str:
        score = getattr(obj, "search_score", None)
        return "—" if score is None else f"{score:.4f}"

    # ----------------------------------------------------------------- actions

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        if self.actions is None or IS_POPUP_VAR in request.GET or not registry.is_registered(self.model):
            return actions
        if "clip_reembed" not in actions and self.has_change_permission(request):
            actions["clip_reembed"] = self.get_action("clip_reembed")
        return actions

    @admin.action(description=_("Re-embed selected %(verbose_name_plural)s"), permissions=["change"])
    def clip_reembed(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        """Queue forced re-embedding in batches; a dead broker leaves stale rows for the sweep."""
        pks = [str(pk) for pk in queryset.order_by().values_list("pk", flat=True)]
        size = clip_settings.BATCH_SIZE
        stale = 0
        for start in range(0, len(pks), size):
            batch = pks[start:start + size]
            if not enqueue(self.clip_registration.label, batch, None, True):
                stale += len(batch)
        queued = len(pks) - stale
        if queued:
            self.message_user(request, _("Queued %(count)d %(items)s for re-embedding.") % {
                "count": queued, "items": model_ngettext(self.opts, queued)}, messages.SUCCESS)
        if stale:
            self.message_user(request, _(
                "The task broker is unavailable: %(count)d %(items)s were marked stale, and the periodic "
                "sweep will queue them again once the broker is back.") % {
                "count": stale, "items": model_ngettext(self.opts, stale)}, messages.WARNING)

    # ----------------------------------------------------------------- views

    def _clip_context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.opts, "title": title,
                "changelist_url": self._clip_url("changelist"), **extra}

    def _clip_object(self, request: HttpRequest, object_id: str) -> models.Model | None:
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj

    def _clip_missing(self, request: HttpRequest, object_id: str) -> HttpResponse:
        messages.warning(request, _("%(name)s with ID “%(key)s” doesn’t exist. Perhaps it was deleted?") % {
            "name": self.opts.verbose_name, "key": unquote(object_id)})
        return HttpResponseRedirect(self._clip_url("changelist"))

    def _clip_rows(self, results: models.QuerySet, query: str = "") -> list[dict[str, Any]]:
        """One dict per hit for the results table: the object, its evidence and its links."""
        hits = results.search_info.hits
        annotated = results.annotate(**{STATUS_ANNOTATION: status_annotation(self.model)})
        rows = []
        for obj in annotated:
            row = getattr(obj, STATUS_ANNOTATION) or {}
            rows.append({
                "obj": obj, "rank": obj.search_rank, "hit": hits.get(str(obj.pk)),
                "thumbnail": thumbnail(self.clip_registration.image_url(obj), str(obj), 64),
                "status": status_badge(row.get("status"), row.get("error") or "", bool(row.get("stale"))),
                "change_url": self._clip_url("change", obj.pk),
                "similar_url": self._clip_url("clip_similar", obj.pk),
                "explain_url": self._clip_url("clip_explain", obj.pk, query={"q": query}) if query else "",
            })
        return rows

    def clip_image_search_view(self, request: HttpRequest) -> HttpResponse:
        """Search by an uploaded picture (and optional words); a bad file is a form error."""
        form = ImageSearchForm(request.POST, request.FILES) if request.method == "POST" else ImageSearchForm()
        context = self._clip_context(request, _("Search by image"), form=form, searched=False)
        if form.is_bound and form.is_valid():
            text = form.cleaned_data["text"].strip()
            try:
                results = search(self.get_queryset(request), text=text or None,
                                 image=form.cleaned_data["image"], include_quarantined=True,
                                 limit=self.clip_search_results_limit)
            except ImageRejected as error:
                form.add_error("image", error.message)
            except SearchError as error:
                form.add_error(None, str(error))
            except Exception as error:  # the image encoder cannot be loaded: say so, do not 500
                logger.exception("clip_search: image search failed")
                form.add_error(None, _("The image encoder is unavailable: %(error)s") % {"error": error})
            else:
                context.update(searched=True, rows=self._clip_rows(results, text),
                               degraded=results.search_info.degraded)
        return TemplateResponse(request, "admin/clip_search/image_search.html", context)

    def clip_similar_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """More like this product, by its stored image vector; the product itself is excluded."""
        obj = self._clip_object(request, object_id)
        if obj is None:
            return self._clip_missing(request, object_id)
        context = self._clip_context(
            request, _("Similar to %(product)s") % {"product": obj}, product=obj, searched=False,
            product_thumbnail=thumbnail(self.clip_registration.image_url(obj), str(obj), 128),
            product_url=self._clip_url("change", obj.pk))
        try:
            results = search(self.get_queryset(request), like=obj, include_quarantined=True,
                             limit=self.clip_search_results_limit)
        except SearchError as error:
            context["error"] = str(error)
        else:
            context.update(searched=True, rows=self._clip_rows(results))
        return TemplateResponse(request, "admin/clip_search/similar.html", context)

    def clip_explain_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Why this product ranks where it does for a query: each leg's rank, measures and share."""
        obj = self._clip_object(request, object_id)
        if obj is None:
            return self._clip_missing(request, object_id)
        form = ExplainForm(request.GET) if "q" in request.GET else ExplainForm()
        context = self._clip_context(
            request, _("Explain %(product)s") % {"product": obj}, product=obj, form=form,
            product_url=self._clip_url("change", obj.pk),
            product_thumbnail=thumbnail(self.clip_registration.image_url(obj), str(obj), 128),
            embedding=Embedding.objects.for_object(obj).active().first())
        if form.is_bound and form.is_valid():
            # Deep enough that anything any leg returned is among the fused hits.
            limit = sum(clip_settings.SEARCH["DEPTH"].values())
            results = search(self.get_queryset(request), text=form.cleaned_data["q"],
                             include_quarantined=True, limit=limit)
            info = results.search_info
            explanation = info.explain(obj)
            position = list(info.hits).index(str(obj.pk)) + 1 if explanation else None
            context.update(info=info, explanation=explanation, position=position, total=len(info.hits),
                           legs=explain_legs(info, explanation), exact_boost=EXACT_BOOST,
                           rrf_k=clip_settings.SEARCH["RRF_K"],
                           exact=bool(explanation and (explanation["keyword"] or {}).get("exact")))
        return TemplateResponse(request, "admin/clip_search/explain.html", context)


def extend_admin(model: type[models.Model] | str, site: admin.AdminSite = admin.site,
                 mixin: type = ClipSearchAdminMixin) -> type[admin.ModelAdmin]:
    """Put ``mixin`` in front of the ModelAdmin another app registered for ``model``, on ``site``.

    For an admin you do not own (Oscar's ``ProductAdmin``): its options, inlines and actions stay
    as they are, and the class is replaced by a subclass with the mixin first. Call it from an
    ``admin.py`` of yours (INSTALLED_APPS after the app that registers the admin) or from ready().
    Registers a plain ``ModelAdmin`` with the mixin when nothing was registered; idempotent.
    """
    from django.apps import apps

    model = apps.get_model(model) if isinstance(model, str) else model
    current = type(site._registry[model]) if site.is_registered(model) else admin.ModelAdmin
    if issubclass(current, mixin):
        return current
    extended = type(f"ClipSearch{current.__name__}", (mixin, current), {"__module__": current.__module__})
    if site.is_registered(model):
        site.unregister(model)
    site.register(model, extended)
    return extended


# --------------------------------------------------------------------------- the review queue


class ReviewDecisionInline(admin.TabularInline):
    """The audit trail of an upload: read-only, never edited or deleted from the admin."""

    model = ReviewDecision
    fields = readonly_fields = ("created_at", "decision", "who", "scores", "encoder", "note")
    extra = 0
    can_delete = False
    verbose_name_plural = _("audit trail")

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).select_related("user", "encoder")

    @admin.display(description=_("who"))
    def who(self, decision: ReviewDecision) -> str:
        if decision.user is not None:
            return decision.user.get_username()
        if decision.username:
            return decision.username  # the account was deleted since
        if decision.decision == ReviewDecision.Decision.FLAGGED:
            return str(_("moderation (automatic)"))
        return "—"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Whoever may see a review item may see how it was decided.
        opts = self.parent_model._meta
        return any(request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")
                   for action in ("view", "change"))


class ReviewItemForm(forms.ModelForm):
    """A staff decision with an optional note; the item's own fields are read-only."""

    decision = forms.ChoiceField(
        label=_("Decision"), required=False, widget=forms.RadioSelect,
        choices=[("", _("Keep open")), ("approve", _("Approve: make it searchable")),
                 ("reject", _("Reject: keep it out of search"))])
    note = forms.CharField(label=_("Note"), required=False, widget=forms.Textarea(attrs={"rows": 3}),
                           help_text=_("Kept in the audit trail with your name."))

    class Meta:
        model = ReviewItem
        fields: list[str] = []


class ReviewChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        """Resolve every product on the page in one query per model, for the previews."""
        super().get_results(request)
        items = list(self.result_list)
        products = products_for(item.embedding for item in items)
        for item in items:
            item.clip_product = products.get((item.embedding.content_type_id, item.embedding.object_pk))


@admin.register(ReviewItem)
class ReviewItemAdmin(admin.ModelAdmin):
    """Open uploads first; approve or reject them in bulk or one by one with a note."""

    form = ReviewItemForm
    list_display = ("preview", "product", "reason", "status_badge", "flagged_categories", "score_list",
                    "created_at", "decided_at")
    list_display_links = ("product",)
    list_filter = ("status", "reason")
    list_select_related = ("embedding__content_type", "embedding__encoder", "image")
    search_fields = ("embedding__object_pk", "image_sha256", "image_name")
    actions = ("approve_selected", "reject_selected")
    inlines = (ReviewDecisionInline,)
    readonly_fields = ("large_preview", "product_link", "reason", "status", "flagged_categories",
                       "score_list", "image_note", "image_name", "image_sha256", "created_at", "decided_at")

    class Media:
        css = {"all": ("clip_search/admin.css",)}

    def get_ordering(self, request: HttpRequest) -> list:
        open_first = Case(When(status=ReviewItem.Status.OPEN, then=Value(0)), default=Value(1))
        return [open_first.asc(), "-created_at"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ReviewChangeList

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).select_related("embedding__content_type", "embedding__encoder",
                                                            "image")

    def get_fieldsets(self, request: HttpRequest, obj: ReviewItem | None = None) -> list:
        fieldsets = [(None, {"fields": self.readonly_fields})]
        is_open = obj is not None and obj.status == ReviewItem.Status.OPEN
        if is_open and self.has_change_permission(request, obj):
            fieldsets.append((_("Decision"), {"fields": ("decision", "note")}))
        return fieldsets

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # items come from moderation, never by hand

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting one would delete its audit trail

    # ----------------------------------------------------------------- columns

    def _product(self, item: ReviewItem) -> models.Model | None:
        if not hasattr(item, "clip_product"):  # the change page: a single item
            item.clip_product = products_for([item.embedding]).get(
                (item.embedding.content_type_id, item.embedding.object_pk))
        return item.clip_product

    def _preview(self, item: ReviewItem, size: int) -> SafeString | str:
        """The reviewed image itself (a product may have several), while the product has it."""
        product = self._product(item)
        if product is None or not registry.is_registered(type(product)):
            return "—"
        url = moderation.reviewed_image_url(item, product, registry.get(type(product)))
        return thumbnail(url, str(product), size)

    @admin.display(description=_("image"))
    def preview(self, item: ReviewItem) -> SafeString | str:
        return self._preview(item, 64)

    @admin.display(description=_("image"))
    def large_preview(self, item: ReviewItem) -> SafeString | str:
        return self._preview(item, 256)

    @admin.display(description=_("product"))
    def product(self, item: ReviewItem) -> str:
        product = self._product(item)
        if product is None:
            return str(_("deleted (%(pk)s)") % {"pk": item.embedding.object_pk})
        return str(product)

    @admin.display(description=_("product"))
    def product_link(self, item: ReviewItem) -> SafeString | str:
        product = self._product(item)
        url = product is not None and admin_change_url(product, self.admin_site.name)
        return format_html('<a href="{}">{}</a>', url, product) if url else self.product(item)

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, item: ReviewItem) -> SafeString:
        return format_html('<span class="clip-review clip-review-{}">{}</span>', item.status,
                           item.get_status_display())

    @admin.display(description=_("categories"))
    def flagged_categories(self, item: ReviewItem) -> str:
        return ", ".join(item.categories) or "—"

    @admin.display(description=_("scores"))
    def score_list(self, item: ReviewItem) -> SafeString | str:
        scores = sorted((item.scores or {}).items(), key=lambda pair: -pair[1])
        if not scores:
            return "—"
        rows = (("clip-over" if name in item.categories else "", name, f"{score:.3f}")
                for name, score in scores)
        return format_html_join(mark_safe("<br>"), '<span class="{}">{}: {}</span>', rows)

    @admin.display(description=_("current image"))
    def image_note(self, item: ReviewItem) -> str:
        if item.image is not None and item.image.sha256 == item.image_sha256:
            return str(_("The product has this image (image %(n)d of its pictures).") % {
                "n": item.image.position + 1})
        return str(_("The product no longer has this image: a decision on it is refused."))

    # ----------------------------------------------------------------- decisions

    def save_model(self, request: HttpRequest, obj: ReviewItem, form: forms.Form, change: bool) -> None:
        """The item's fields are read-only: saving means recording the decision, if any."""
        decision = form.cleaned_data.get("decision")
        if not decision:
            return
        decide = moderation.approve if decision == "approve" else moderation.reject
        try:
            decide(obj, user=request.user, note=form.cleaned_data.get("note", ""))
        except moderation.ImageChanged:
            self.message_user(request, _("The product no longer has this image; the item was closed as "
                                         "superseded and nothing else was changed."), messages.WARNING)
        except moderation.DecisionRefused:
            self.message_user(request, _("This item was already decided; nothing was changed."),
                              messages.WARNING)

    @admin.action(description=_("Approve selected uploads (make them searchable)"), permissions=["change"])
    def approve_selected(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._decide(request, queryset, moderation.approve, _("approved"))

    @admin.action(description=_("Reject selected uploads (keep them out of search)"), permissions=["change"])
    def reject_selected(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._decide(request, queryset, moderation.reject, _("rejected"))

    def _decide(self, request: HttpRequest, queryset: models.QuerySet, decide: Callable, verb: str) -> None:
        """Decide each open item; items already decided are reported and left alone."""
        done = skipped = 0
        for item in queryset:
            try:
                decide(item, user=request.user)
            except moderation.DecisionRefused:
                skipped += 1
            else:
                done += 1
        if done:
            self.message_user(request, ngettext(
                "%(count)d upload %(verb)s.", "%(count)d uploads %(verb)s.", done) % {
                "count": done, "verb": verb}, messages.SUCCESS)
        if skipped:
            self.message_user(request, ngettext(
                "%(count)d selected upload was already decided, or its product no longer has the image, "
                "and was left as it is.",
                "%(count)d selected uploads were already decided, or their products no longer have the "
                "image, and were left as they are.", skipped) % {
                "count": skipped}, messages.WARNING)


# --------------------------------------------------------------------------- read-only tables


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by clip_search's pipeline: staff look, the pipeline writes."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ImageEmbeddingInline(admin.TabularInline):
    """A product's images: what each was scored (the vector itself helps nobody here)."""

    model = ImageEmbedding
    fields = readonly_fields = ("position", "name", "size", "sha256", "verdict", "moderation_scores", "error",
                                "embedded_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Embedding)
class EmbeddingAdmin(ReadOnlyAdmin):
    list_display = ("object_link", "content_type", "encoder", "status_badge", "stale", "attempts",
                    "short_error", "updated_at")
    list_filter = ("status", "stale", ("encoder", admin.RelatedOnlyFieldListFilter),
                   ("content_type", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("content_type", "encoder")
    search_fields = ("object_pk", "error", "keywords")
    exclude = ("search_document",)  # a tsvector helps nobody here
    inlines = (ImageEmbeddingInline,)

    class Media:
        css = {"all": ("clip_search/admin.css",)}

    @admin.display(description=_("object"), ordering="object_pk")
    def object_link(self, row: Embedding) -> SafeString | str:
        try:
            url = reverse(f"admin:{row.content_type.app_label}_{row.content_type.model}_change",
                          args=[quote(row.object_pk)], current_app=self.admin_site.name)
        except NoReverseMatch:
            return row.object_pk
        return format_html('<a href="{}">{}</a>', url, row.object_pk)

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, row: Embedding) -> SafeString:
        return status_badge(row.status, row.error, row.stale)

    @admin.display(description=_("error"))
    def short_error(self, row: Embedding) -> str:
        return row.error if len(row.error) <= 80 else f"{row.error[:79]}…"


@admin.register(EncoderModel)
class EncoderModelAdmin(ReadOnlyAdmin):
    list_display = ("name", "weights", "short_fingerprint", "dimension", "is_active", "embedding_count",
                    "activated_at", "created_at")
    list_filter = ("is_active",)
    ordering = ("-is_active", "-created_at")
    exclude = ("pretrained",)  # shown as "weights": what is stored may be a tag that never loaded
    readonly_fields = ("weights",)

    def get_queryset(self, request: HttpRequest) -> models.QuerySet:
        return super().get_queryset(request).annotate(embedding_count=Count("embeddings"))

    @admin.display(description=_("weights"))
    def weights(self, encoder: EncoderModel) -> str:
        """Where the weights came from: a local-dir: row may still store a tag that never loaded."""
        return encoder.weights_label

    @admin.display(description=_("fingerprint"))
    def short_fingerprint(self, encoder: EncoderModel) -> str:
        return encoder.fingerprint[:12]

    @admin.display(description=_("embeddings"), ordering="embedding_count")
    def embedding_count(self, encoder: EncoderModel) -> int:
        return encoder.embedding_count
