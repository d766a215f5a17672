"""The review queue: quarantined uploads, the very image flagged, approve/reject, the audit trail."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db import models
from django.db.models import Case, Value, When
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from clip_search import moderation
from clip_search.admin.display import ProductColumns
from clip_search.models import ReviewDecision, ReviewItem

logger = logging.getLogger(__name__)
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


@admin.register(ReviewItem)
class ReviewItemAdmin(ProductColumns, admin.ModelAdmin):
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

    def product_key(self, item: ReviewItem) -> tuple[int, str]:
        return item.embedding.content_type_id, item.embedding.object_pk

    def product_image_url(self, item: ReviewItem, product: models.Model, registration: Any) -> str | None:
        """The reviewed image itself (a product may have several), while the product has it."""
        return moderation.reviewed_image_url(item, product, registration)

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
