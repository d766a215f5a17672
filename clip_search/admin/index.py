"""clip_search's own rows, read-only: what the pipeline wrote, for staff to look at."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.db import models
from django.db.models import Count
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from clip_search.admin.display import (
    status_badge,
)
from clip_search.models import Embedding, EncoderModel, ImageEmbedding

logger = logging.getLogger(__name__)
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
