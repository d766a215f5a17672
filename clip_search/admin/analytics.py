"""The search log in the admin: each search with what shoppers did with it, and the analytics
page (top and zero-result queries, click-through and MRR per query, which leg found what was
clicked, trends by day), filtered by date. Read-only: the log is written by searches."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.translation import gettext_lazy as _

from clip_search import analytics, click_synonyms
from clip_search.admin.charts import bars, columns
from clip_search.admin.index import ReadOnlyAdmin
from clip_search.models import SearchEvent, SearchRecord

DEFAULT_DAYS = 30


class SearchEventInline(admin.TabularInline):
    model = SearchEvent
    fields = readonly_fields = ("created_at", "kind", "position", "object_pk")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(SearchRecord)
class SearchRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "query", "corrected_query", "hits", "latency", "degraded", "clicks")
    list_filter = ("kind", "degraded", "created_at")
    search_fields = ("query", "corrected_query")
    date_hierarchy = "created_at"
    inlines = (SearchEventInline,)
    change_list_template = "admin/clip_search/searchrecord/change_list.html"

    def get_queryset(self, request: HttpRequest):
        from django.db.models import Count, Q

        return super().get_queryset(request).annotate(
            click_count=Count("events", filter=Q(events__kind=SearchEvent.Kind.CLICK)))

    @admin.display(description=_("latency"), ordering="latency_ms")
    def latency(self, row: SearchRecord) -> str:
        return f"{row.latency_ms:.0f} ms"

    @admin.display(description=_("clicks"), ordering="click_count")
    def clicks(self, row: SearchRecord) -> int:
        return row.click_count

    def get_urls(self) -> list:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [path("analytics/", self.admin_site.admin_view(self.analytics_view), name=f"{name}_analytics"),
                path("analytics/synonym/", self.admin_site.admin_view(self.add_synonym_view),
                     name=f"{name}_add_synonym"),
                *super().get_urls()]

    def add_synonym_view(self, request: HttpRequest) -> HttpResponse:
        """A suggestion of the analytics page made a one-way synonym set (POST, add_synonym)."""
        from django.contrib import messages
        from django.shortcuts import redirect

        from clip_search.models import Synonym
        from clip_search.synonyms import SynonymFileError, format_line, parse_line

        if request.method != "POST" or not request.user.has_perm("clip_search.add_synonym"):
            raise PermissionDenied
        try:
            line = parse_line(f"{request.POST.get('word', '')} => {request.POST.get('means', '')}")
        except SynonymFileError as error:
            messages.error(request, str(error))
        else:
            Synonym.objects.create(terms=list(line.terms), synonyms=list(line.synonyms),
                                   note=str(_("suggested by clicks")))
            messages.success(request, _("Added the synonym set “%(line)s”.") % {"line": format_line(line)})
        return redirect("admin:clip_search_searchrecord_analytics")

    def analytics_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        period, errors = _period(request)
        top = analytics.top_queries(period)
        zero = analytics.top_queries(period, zero_only=True)
        legs = analytics.clicked_by_leg(period)
        days = analytics.daily(period)
        suggested = [candidate for found in (click_synonyms.by_model(period) or {}).values()
                     for candidate in found]
        labels = [day["day"].isoformat() for day in days]
        context = {
            **self.admin_site.each_context(request), "opts": self.opts, "title": _("Search analytics"),
            "period": period, "errors": errors, "summary": analytics.summary(period),
            "top": top, "zero": zero, "legs": legs, "suggested": suggested,
            "can_add_synonym": request.user.has_perm("clip_search.add_synonym"),
            "top_chart": bars([(row.query, row.searches) for row in top[:10]], title=str(_("Top queries"))),
            "zero_chart": bars([(row.query, row.searches) for row in zero[:10]],
                               title=str(_("Queries that found nothing"))),
            "legs_chart": bars(legs, title=str(_("Clicks by the legs that found the clicked result"))),
            "daily_chart": columns(labels, [day["searches"] for day in days], [day["ctr"] for day in days],
                                   title=str(_("Searches per day, with the click-through rate")),
                                   rate_label=str(_("click-through rate"))),
        }
        return TemplateResponse(request, "admin/clip_search/searchrecord/analytics.html", context)


def _period(request: HttpRequest) -> tuple[analytics.Period, list[str]]:
    """``?from=YYYY-MM-DD&to=YYYY-MM-DD``, the last 30 days by default; a bad date is reported."""
    default = analytics.Period.last(DEFAULT_DAYS)
    errors = []
    bounds = {}
    for key, fallback in (("from", default.start), ("to", default.end)):
        value = request.GET.get(key, "")
        try:
            bounds[key] = date.fromisoformat(value) if value else fallback
        except ValueError:
            errors.append(str(_("%(value)s is not a date (YYYY-MM-DD).") % {"value": value}))
            bounds[key] = fallback
    if bounds["from"] > bounds["to"]:
        errors.append(str(_("The period starts after it ends.")))
        return default, errors
    return analytics.Period(bounds["from"], bounds["to"]), errors

