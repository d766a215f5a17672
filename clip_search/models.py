"""Tables owned by clip_search. The shop's own product table is never altered."""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils.translation import gettext_lazy as _
from pgvector.django import VectorField


class EncoderModel(models.Model):
    """One set of CLIP weights. Embeddings of different encoders never mix.

    Switching models means embedding into rows of a new EncoderModel while search keeps
    reading the active one, then flipping ``is_active`` in one transaction.
    """

    name = models.CharField(_("model name"), max_length=200)
    pretrained = models.CharField(_("pretrained weights"), max_length=500, blank=True)
    fingerprint = models.CharField(
        _("weights fingerprint"), max_length=64,
        help_text=_("sha256 over the weights: same name and tag with other weights is another model."),
    )
    dimension = models.PositiveIntegerField(_("embedding dimension"))
    is_active = models.BooleanField(_("active"), default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("encoder model")
        constraints = [
            models.UniqueConstraint(fields=["name", "pretrained", "fingerprint"],
                                    name="clip_search_encoder_unique_weights"),
            models.UniqueConstraint(fields=["is_active"], condition=models.Q(is_active=True),
                                    name="clip_search_one_active_encoder"),
        ]

    def __str__(self) -> str:
        return f"{self.name} / {self.pretrained or 'random'} ({self.fingerprint[:8]})"


class EmbeddingQuerySet(models.QuerySet):
    def for_object(self, obj: models.Model) -> EmbeddingQuerySet:
        content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
        return self.filter(content_type=content_type, object_pk=str(obj.pk))

    def for_model(self, model: type[models.Model]) -> EmbeddingQuerySet:
        content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
        return self.filter(content_type=content_type)

    def active(self) -> EmbeddingQuerySet:
        return self.filter(encoder__is_active=True)

    def searchable(self) -> EmbeddingQuerySet:
        """Rows the storefront may ever see: indexed (or approved after review)."""
        return self.filter(status=Embedding.Status.INDEXED)


class Embedding(models.Model):
    """A product's CLIP vector for one encoder plus its search document.

    Keeping the full-text document and keyword text beside the vector lets every search leg
    read this one indexed table and touch the shop's table only to filter and fetch.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        INDEXED = "indexed", _("indexed")
        FLAGGED = "flagged", _("flagged (quarantined)")
        REJECTED = "rejected", _("rejected")
        NO_IMAGE = "no_image", _("no image")
        ERROR = "error", _("error")

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    # Text, so integer, UUID and string primary keys of any shop model fit.
    object_pk = models.CharField(max_length=64)
    encoder = models.ForeignKey(EncoderModel, on_delete=models.CASCADE, related_name="embeddings")
    # Untyped ``vector``: each encoder has its own dimension and its own partial HNSW index
    # over ``vector::vector(dim)`` (see clip_search.sql.ensure_vector_index).
    vector = VectorField(null=True, blank=True)
    image_sha256 = models.CharField(max_length=64, blank=True)
    # The storage name the vector was made from: a save with another name is a new upload,
    # hidden (pending) until the worker has scored it.
    image_name = models.CharField(max_length=500, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    moderation_scores = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The object changed but its task could not be queued (broker down): the sweep redoes it.
    stale = models.BooleanField(default=False)
    search_document = SearchVectorField(null=True, blank=True)
    keywords = models.TextField(blank=True)
    # Lower-cased whole keyword values (a SKU, a brand): an exact match ranks first.
    keyword_tokens = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    # What the document and image were built from (image name + text): a save that changes
    # none of it enqueues nothing.
    source_digest = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    embedded_at = models.DateTimeField(null=True, blank=True)

    objects = EmbeddingQuerySet.as_manager()

    class Meta:
        verbose_name = _("embedding")
        constraints = [
            models.UniqueConstraint(fields=["content_type", "object_pk", "encoder"],
                                    name="clip_search_one_embedding_per_object_and_encoder"),
        ]
        indexes = [
            models.Index(fields=["encoder", "status"], name="clip_search_encoder_status"),
            GinIndex(fields=["search_document"], name="clip_search_document_gin"),
            # GIN, not GiST: the keyword leg reads a bounded number of fuzzy matches and ranks
            # them itself (sql._keyword_leg), and GIN rejects most non-matches on their trigram
            # count alone, where a GiST walk rechecked every row sharing a word (17-40 ms at 200k).
            GinIndex(fields=["keywords"], name="clip_search_keywords_trgm", opclasses=["gin_trgm_ops"]),
            GinIndex(fields=["keyword_tokens"], name="clip_search_keyword_tokens"),
        ]

    def __str__(self) -> str:
        return f"{self.content_type.model}:{self.object_pk} [{self.status}]"


class ReviewItem(models.Model):
    """A quarantined (or sampled) upload waiting for a staff decision."""

    class Reason(models.TextChoices):
        FLAGGED = "flagged", _("flagged by moderation")
        SAMPLED = "sampled", _("sampled for quality control")

    class Status(models.TextChoices):
        OPEN = "open", _("open")
        APPROVED = "approved", _("approved")
        REJECTED = "rejected", _("rejected")
        SUPERSEDED = "superseded", _("superseded by a new image")

    embedding = models.ForeignKey(Embedding, on_delete=models.CASCADE, related_name="review_items")
    image_sha256 = models.CharField(max_length=64)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    categories = models.JSONField(default=list, blank=True, help_text=_("Categories over threshold."))
    scores = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("review item")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="clip_search_review_status")]

    def __str__(self) -> str:
        return f"{self.embedding} — {self.get_reason_display()} [{self.status}]"


class ReviewDecision(models.Model):
    """The audit trail: every moderation decision, who made it, on which scores and model."""

    class Decision(models.TextChoices):
        FLAGGED = "flagged", _("flagged by moderation")
        APPROVED = "approved", _("approved")
        REJECTED = "rejected", _("rejected")

    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="decisions")
    decision = models.CharField(max_length=16, choices=Decision.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    username = models.CharField(max_length=150, blank=True, help_text=_("Kept if the user is deleted."))
    scores = models.JSONField(default=dict)
    encoder = models.ForeignKey(EncoderModel, null=True, on_delete=models.SET_NULL)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("review decision")
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.decision} by {self.username or 'moderation'} at {self.created_at:%Y-%m-%d %H:%M}"
