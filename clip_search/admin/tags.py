"""Product tags: the suggestions of zero-shot tagging, accepted or rejected by staff.

Suggestions come from the model (``clip_tag``, the "Suggest tags" action of the product
changelist); staff decide, in bulk or one by one. Deciding needs ``change_producttag``; the
decision, who made it and when are kept, and a decision outlives new suggestions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.aggregates import JSONBAgg
from django.db import models
from django.db.models import CharField, JSONField, OuterRef, Subquery
from django.db.models.functions import Cast, JSONObject
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from clip_search import tagging
from clip_search.admin.display import ProductColumns
from clip_search.models import ProductTag

Status = ProductTag.Status


def tag_badge(tag: ProductTag | dict[str, Any]) -> SafeString:
    """``colour: red`` as a badge: solid when accepted, outlined with the confidence when only
    suggested, struck through when rejected."""
    value = tag if isinstance(tag, dict) else {"label_set": tag.label_set, "label": tag.label,
                                                "status": tag.status, "confidence": tag.confidence}
    title = _("%(status)s, confidence %(confidence).2f") % {
        "status": Status(value["status"]).label, "confidence": value["confidence"]}
    return format_html('<span class="clip-tag clip-tag-{}" title="{}">{}: {}</span>', value["status"], title,
                       value["label_set"], value["label"])


class ProductTagForm(forms.ModelForm):
    """A staff decision; the tag's own fields are read-only."""

    decision = forms.ChoiceField(
        label=_("Decision"), required=False, widget=forms.RadioSelect,
        choices=[("", _("Leave as it is")), ("accept", _("Accept: the product has this label")),
                 ("reject", _("Reject: never suggest it for this product again"))])

    class Meta:
        model = ProductTag
        fields: list[str] = []


@admin.register(ProductTag)
class ProductTagAdmin(ProductColumns, admin.ModelAdmin):
    """Suggestions first, most confident first; filtered by status, set, label and encoder."""

    preview_size, large_preview_size = 48, 192

    form = ProductTagForm
    list_display = ("preview", "product", "badge", "confidence_percent", "status", "encoder", "decided")
    list_display_links = ("badge",)
    list_filter = ("status", "label_set", "label", ("encoder", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("encoder", "decided_by")
    search_fields = ("label", "object_pk")
    actions = ("accept_selected", "reject_selected")
    readonly_fields = ("large_preview", "product_link", "label_set", "label", "confidence_percent", "status",
                       "encoder", "suggested_at", "decided")

    class Media:
        css = {"all": ("clip_search/admin.css",)}

    def get_ordering(self, request: HttpRequest) -> list:
        return ["-status", "-confidence", "pk"]  # suggested, rejected, accepted: work to do first

    def get_fieldsets(self, request: HttpRequest, obj: ProductTag | None = None) -> list:
        fieldsets = [(None, {"fields": self.readonly_fields})]
        if obj is not None and self.has_change_permission(request, obj):
            fieldsets.append((_("Decision"), {"fields": ("decision",)}))
        return fieldsets

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tags come from the model's suggestions

    # ----------------------------------------------------------------- columns

    def product_key(self, tag: ProductTag) -> tuple[int, str]:
        return tag.content_type_id, tag.object_pk

    @admin.display(description=_("tag"), ordering="label")
    def badge(self, tag: ProductTag) -> SafeString:
        return tag_badge(tag)

    @admin.display(description=_("confidence"), ordering="confidence")
    def confidence_percent(self, tag: ProductTag) -> str:
        return f"{tag.confidence:.0%}"

    @admin.display(description=_("decided"), ordering="decided_at")
    def decided(self, tag: ProductTag) -> str:
        if tag.decided_at is None:
            return "—"
        who = tag.decided_by.get_username() if tag.decided_by else tag.decided_by_name
        return f"{who or '—'}, {tag.decided_at:%Y-%m-%d %H:%M}"

    # ----------------------------------------------------------------- decisions

    def save_model(self, request: HttpRequest, obj: ProductTag, form: forms.Form, change: bool) -> None:
        """The tag's fields are read-only: saving means recording the decision, if any."""
        decision = form.cleaned_data.get("decision")
        if decision:
            (tagging.accept if decision == "accept" else tagging.reject)([obj], user=request.user)

    @admin.action(description=_("Accept selected tags"), permissions=["change"])
    def accept_selected(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._decide(request, queryset, tagging.accept, _("accepted"))

    @admin.action(description=_("Reject selected tags"), permissions=["change"])
    def reject_selected(self, request: HttpRequest, queryset: models.QuerySet) -> None:
        self._decide(request, queryset, tagging.reject, _("rejected"))

    def _decide(self, request: HttpRequest, queryset: models.QuerySet, decide: Callable, verb: str) -> None:
        tags = list(queryset)
        changed = decide(tags, user=request.user)
        done = ngettext("%(count)d tag %(verb)s.", "%(count)d tags %(verb)s.", changed)
        self.message_user(request, done % {"count": changed, "verb": verb}, messages.SUCCESS)
        if changed < len(tags):
            self.message_user(request, ngettext(
                "%(count)d selected tag was already %(verb)s and was left as it is.",
                "%(count)d selected tags were already %(verb)s and were left as they are.",
                len(tags) - changed) % {"count": len(tags) - changed, "verb": verb}, messages.INFO)


# --------------------------------------------------------------------------- the shop's changelist

TAGS_ANNOTATION = "clip_search_tags"
TAG_FIELDS = ("label_set", "label", "status", "confidence")  # what a badge shows


def tags_annotation(model: type[models.Model]) -> Subquery:
    """One correlated subquery giving each changelist row its tags (rejected ones left out), as
    a JSON list, most confident first within each set: no query per row."""
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    key = Cast(OuterRef("pk"), CharField())
    tags = (ProductTag.objects.filter(content_type=content_type, object_pk=key)
            .exclude(status=Status.REJECTED).order_by().values("content_type"))
    listed = JSONBAgg(JSONObject(**{name: name for name in TAG_FIELDS}),
                      order_by=("label_set", "-confidence"))
    return Subquery(tags.annotate(tags=listed).values("tags")[:1], output_field=JSONField())


def product_tags(obj: models.Model) -> list[dict[str, Any]]:
    """The changelist row's tags (``tags_annotation``), or one query for them elsewhere."""
    annotated = getattr(obj, TAGS_ANNOTATION, None)
    if annotated is not None or hasattr(obj, TAGS_ANNOTATION):
        return annotated or []
    content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
    return list(ProductTag.objects.filter(content_type=content_type, object_pk=str(obj.pk))
                .exclude(status=Status.REJECTED).order_by("label_set", "-confidence").values(*TAG_FIELDS))


def tags_cell(obj: models.Model, tags_url: str | None) -> SafeString | str:
    """The badges of a product's tags, linked to its tags in the tag admin (for deciding)."""
    tags = product_tags(obj)
    if not tags:
        return "—"
    badges = format_html_join(" ", "{}", ((tag_badge(tag),) for tag in tags))
    if not tags_url:
        return badges
    content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
    link = f"{tags_url}?{urlencode({'content_type': content_type.pk, 'object_pk': obj.pk})}"
    return format_html('{} <a href="{}" class="clip-tag-review">{}</a>', badges, link, _("review"))
