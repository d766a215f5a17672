"""``ClipSearchAdminMixin``: hybrid search, image search, "similar" and "explain" in the shop's own
changelist of a registered model (and its tags, with a "Suggest tags" action, once label sets are
configured), and ``extend_admin`` for an admin another app registered."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import update_wrapper
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import model_ngettext, quote, unquote
from django.contrib.admin.views.main import ORDER_VAR, SEARCH_VAR, ChangeList
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import models
from django.db.models import CharField, Value
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import select_template
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from clip_search import tagging
from clip_search.admin.display import (
    LEG_LABELS,
    QUERY_ANNOTATION,
    STATUS_ANNOTATION,
    explain_legs,
    status_annotation,
    status_badge,
    thumbnail,
)
from clip_search.admin.tags import TAGS_ANNOTATION, tags_annotation, tags_cell
from clip_search.conf import clip_settings
from clip_search.imaging import ImageRejected
from clip_search.models import Embedding
from clip_search.registry import Registration, registry
from clip_search.search import EXACT_BOOST, SearchError, SearchInfo, search
from clip_search.tasks import enqueue

logger = logging.getLogger(__name__)
_MISSING = object()


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
        if "clip_tags" in self.list_display:
            queryset = queryset.annotate(**{TAGS_ANNOTATION: tags_annotation(self.model)})
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
    # With CLIP_SEARCH["TAGGING"]["SETS"]: a tags column (with clip_search_columns) and a
    # "Suggest tags" action.
    clip_search_tags = True
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
        back += ["clip_tags"] if self._clip_tagging() else []
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

    @admin.display(description=_("tags"))
    def clip_tags(self, obj: models.Model) -> SafeString | str:
        """Accepted tags solid, suggestions outlined (confidence in the tooltip), linked to them
        in the tag admin, where staff accept or reject them."""
        url = reverse("admin:clip_search_producttag_changelist", current_app=self.admin_site.name)
        return tags_cell(obj, url)

    def _clip_tagging(self) -> bool:
        return self.clip_search_tags and bool(clip_settings.TAGGING["SETS"])

    # ----------------------------------------------------------------- actions

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        if self.actions is None or IS_POPUP_VAR in request.GET or not registry.is_registered(self.model):
            return actions
        if "clip_reembed" not in actions and self.has_change_permission(request):
            actions["clip_reembed"] = self.get_action("clip_reembed")
        if self._clip_tagging() and self.has_clip_suggest_tags_permission(request):
            actions["clip_suggest_tags"] = self.get_action("clip_suggest_tags")
        return actions

    def has_clip_suggest_tags_permission(self, request: HttpRequest) -> bool:
        """Suggesting tags is the tag reviewers' work: ``clip_search.change_producttag``."""
        return request.user.has_perm("clip_search.change_producttag")

    @admin.action(description=_("Suggest tags for selected %(verbose_name_plural)s"),
                  permissions=["clip_suggest_tags"])
    def clip_suggest_tags(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        """Score the selection's stored image vectors against the label sets, here and now (no
        image is read: fast enough for any selection); decided tags stay as they are."""
        pks = list(queryset.order_by().values_list("pk", flat=True))
        try:
            tagged = tagging.suggest(self.clip_registration, pks)
        except ImproperlyConfigured as error:
            self.message_user(request, _("No tags suggested: %(error)s") % {"error": error}, messages.ERROR)
            return
        self.message_user(request, _(
            "%(suggested)d tags suggested for %(count)d %(items)s (%(withdrawn)d earlier suggestions "
            "withdrawn).") % {"suggested": tagged.suggested, "count": tagged.products,
                              "items": model_ngettext(self.opts, tagged.products),
                              "withdrawn": tagged.withdrawn}, messages.SUCCESS)
        missing = tagged.without_vectors
        if missing:
            text = _("%(count)d %(items)s have no embedded image yet and got no tags.")
            items = model_ngettext(self.opts, missing)
            self.message_user(request, text % {"count": missing, "items": items}, messages.WARNING)

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
