"""Tables owned by clip_search. The shop's own product table is never altered."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, GistIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import F
from django.db.models.functions import Length
from django.utils.translation import gettext_lazy as _
from pgvector.django import VectorField

from clip_search.weights import weights_label


def integer_pk(model: type[models.Model]) -> bool:
    """The model's primary key is an integer (a one-to-one parent link: its target's)."""
    target = model._meta.pk.target_field if model._meta.pk.is_relation else model._meta.pk
    return target.get_internal_type() in INTEGER_TYPES


def object_id(model: type[models.Model], pk: Any) -> int | None:
    """The pk as an integer for models with integer primary keys (``Embedding.object_id``)."""
    return int(pk) if integer_pk(model) else None


INTEGER_TYPES = {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
                 "SmallIntegerField", "PositiveIntegerField", "PositiveBigIntegerField",
                 "PositiveSmallIntegerField"}


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
    # An upper bound of the vectors any one product has with this encoder: the vector leg reads
    # this many image hits per product it wants, so that collapsing to one hit per product
    # (its best image) still leaves enough products. Raised by the writer, never lowered.
    max_images = models.PositiveSmallIntegerField(_("most images of a product"), default=1)
    # The relevance floor of text queries (clip_search.calibration), measured on this encoder's
    # own index: cosine similarity a query whose words match no product text must reach (what
    # made-up words reach, at a high quantile), and how far below a query's best hit a vector
    # hit may still be (how far below it a product's own title puts its own picture).
    noise_floor = models.FloatField(_("noise floor"), null=True, blank=True)
    relevance_window = models.FloatField(_("relevance window"), null=True, blank=True)
    calibrated_at = models.DateTimeField(_("calibrated"), null=True, blank=True)
    calibrated_objects = models.PositiveIntegerField(
        _("objects when calibrated"), null=True, blank=True,
        help_text=_("Indexed objects at calibration: the sweep calibrates again when this drifts."))

    class Meta:
        verbose_name = _("encoder model")
        constraints = [
            models.UniqueConstraint(fields=["name", "pretrained", "fingerprint"],
                                    name="clip_search_encoder_unique_weights"),
            models.UniqueConstraint(fields=["is_active"], condition=models.Q(is_active=True),
                                    name="clip_search_one_active_encoder"),
        ]

    def __str__(self) -> str:
        return f"{self.name} / {self.weights_label} ({self.fingerprint[:8]})"

    @property
    def weights_label(self) -> str:
        """Where the weights came from (tag, checkpoint file, folder, hub), never a stored tag
        that did not load: see clip_search.weights."""
        return weights_label(self.name, self.pretrained)


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
    """A product's entry in the index of one encoder: its storefront status, its search
    document, and the identity of what it was built from. Its vectors, one per image, are
    ``ImageEmbedding`` rows.

    Keeping the full-text document and keyword text here lets every search leg read
    clip_search's own indexed tables and touch the shop's table only to filter and fetch.
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
    # The same key as an integer, for shop models with integer primary keys (most): the
    # search's filter on the shop's pks then walks an index instead of casting every row.
    object_id = models.BigIntegerField(null=True, blank=True)
    encoder = models.ForeignKey(EncoderModel, on_delete=models.CASCADE, related_name="embeddings")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The object changed but its task could not be queued (broker down): the sweep redoes it.
    stale = models.BooleanField(default=False)
    # Staff asked to re-embed unchanged images while the broker was down: the sweep's task
    # re-embeds instead of reusing the stored vectors.
    reembed = models.BooleanField(default=False)
    search_document = SearchVectorField(null=True, blank=True)
    keywords = models.TextField(blank=True)
    # Lower-cased whole keyword values (a SKU, a brand): an exact match ranks first.
    keyword_tokens = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    # The object's words as written (``simple`` configuration: not stemmed), for the catalog
    # vocabulary that spelling correction reads (clip_search.lexicon); None for rows written
    # before it existed (the lexicon's refresh fills them).
    words = SearchVectorField(null=True, blank=True)
    # Phrases offered as the shopper types, by kind: {"title": [...], "brand": [...]}.
    suggestions = models.JSONField(null=True, blank=True)
    # sha256 over what the row was built from: the searchable text and the images' storage
    # names in display order. The verify pass recomputes it from the shop's tables; a
    # difference is work that no signal reported.
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
            models.Index(fields=["object_id", "content_type", "encoder"], name="clip_search_embedding_id"),
            GinIndex(fields=["search_document"], name="clip_search_document_gin"),
            # GIN, not GiST: the keyword leg reads a bounded number of fuzzy matches and ranks
            # them itself (sql._keyword_leg), and GIN rejects most non-matches on their trigram
            # count alone, where a GiST walk rechecked every row sharing a word (17-40 ms at 200k).
            GinIndex(fields=["keywords"], name="clip_search_keywords_trgm", opclasses=["gin_trgm_ops"]),
            GinIndex(fields=["keyword_tokens"], name="clip_search_keyword_tokens"),
        ]

    def __str__(self) -> str:
        return f"{self.content_type.model}:{self.object_pk} [{self.status}]"

    @property
    def primary_image(self) -> ImageEmbedding | None:
        """The first image in display order: what "more like this" starts from."""
        return self.images.order_by("position").first()


class ImageEmbedding(models.Model):
    """One image of a product: its CLIP vector, the image's identity and its moderation verdict.

    Moderation is per image, quarantine per product: the product row's status is derived
    from its images' verdicts. The product's keys and status are copied here (and written
    with the product row, in one transaction) so that the vector leg reads this one table
    through its encoder's HNSW index.
    """

    class Verdict(models.TextChoices):
        PASSED = "passed", _("passed moderation")
        FLAGGED = "flagged", _("flagged")
        APPROVED = "approved", _("approved by staff")
        REJECTED = "rejected", _("rejected by staff")
        ERROR = "error", _("could not be read")

    embedding = models.ForeignKey(Embedding, on_delete=models.CASCADE, related_name="images")
    position = models.PositiveSmallIntegerField(_("display order"), default=0)
    name = models.CharField(_("storage name"), max_length=500, blank=True)
    size = models.BigIntegerField(_("bytes"), null=True, blank=True,
                                  help_text=_("None for rows migrated from before sizes were kept."))
    sha256 = models.CharField(max_length=64, blank=True)
    # Untyped ``vector``: each encoder has its own dimension and its own partial HNSW index
    # over ``vector::vector(dim)`` (see clip_search.sql.ensure_vector_index). None for an image
    # that could not be read, or past ``MAX_IMAGES`` (moderated, not searched).
    vector = VectorField(null=True, blank=True)
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    moderation_scores = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # Copies of the product row's keys and status (see the class docstring).
    encoder = models.ForeignKey(EncoderModel, on_delete=models.CASCADE, related_name="+", db_index=False)
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+",
                                     db_index=False)
    object_pk = models.CharField(max_length=64)
    object_id = models.BigIntegerField(null=True, blank=True)
    product_status = models.CharField(max_length=16, choices=Embedding.Status.choices)
    embedded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("image embedding")
        ordering = ["embedding", "position"]
        indexes = [
            models.Index(fields=["object_id", "content_type", "encoder"], name="clip_search_image_object_id"),
            models.Index(fields=["object_pk", "content_type", "encoder"], name="clip_search_image_object_pk"),
        ]

    def __str__(self) -> str:
        return f"{self.object_pk} #{self.position} {self.name or self.sha256[:12]} [{self.verdict}]"

    @property
    def is_cleared(self) -> bool:
        """Scored and fit for the storefront: passed moderation or approved by staff."""
        return self.verdict in (self.Verdict.PASSED, self.Verdict.APPROVED)


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
    # The reviewed image: a decision applies only while the product still holds it (same
    # sha256 and storage name); None once the image left the product.
    image = models.ForeignKey(ImageEmbedding, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="review_items")
    image_sha256 = models.CharField(max_length=64)
    image_name = models.CharField(max_length=500, blank=True)
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


class VerifyCursor(models.Model):
    """Where the sweep's verify pass stopped for one model and encoder: the next sweep resumes
    after ``last_pk`` and a pass past the last product starts again from the first."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    encoder = models.ForeignKey(EncoderModel, on_delete=models.CASCADE, related_name="+")
    last_pk = models.CharField(max_length=64, blank=True)
    passes = models.PositiveIntegerField(default=0, help_text=_("Completed passes over the catalog."))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("verify cursor")
        constraints = [models.UniqueConstraint(fields=["content_type", "encoder"],
                                               name="clip_search_one_verify_cursor")]

    def __str__(self) -> str:
        return f"{self.content_type.model} after {self.last_pk or 'the start'} (pass {self.passes + 1})"


class Lexicon(models.Model):
    """When the vocabulary and suggestions of one registered model were last built
    (clip_search.lexicon): the sweep builds them again once the index changed."""

    content_type = models.OneToOneField(ContentType, on_delete=models.CASCADE)
    built_at = models.DateTimeField()
    words = models.PositiveIntegerField(default=0)
    suggestions = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = _("lexicon")

    def __str__(self) -> str:
        return f"{self.content_type.model}: {self.words} words, {self.suggestions} suggestions"


class Term(models.Model):
    """A word the catalog uses (never "corrected"; what misspellings are corrected to), with the
    number of storefront products using it."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    text = models.CharField(max_length=200)
    products = models.PositiveIntegerField()

    class Meta:
        verbose_name = _("term")
        constraints = [models.UniqueConstraint(fields=["content_type", "text"], name="clip_search_one_term")]
        indexes = [GistIndex(fields=["text"], name="clip_search_term_trgm", opclasses=["gist_trgm_ops"])]

    def __str__(self) -> str:
        return self.text


class Suggestion(models.Model):
    """A completion offered as the shopper types: a title, brand or category of the catalog."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=32)
    text = models.CharField(max_length=300)
    key = models.CharField(max_length=300)  # lower-cased: one suggestion per kind and key
    document = SearchVectorField()  # the text's words (simple configuration), for word prefixes
    products = models.PositiveIntegerField()
    # A few of the Embedding rows that offered it: a suggestion is shown only while one of them
    # is still in the storefront (none quarantined since the lexicon was built).
    embeddings = ArrayField(models.BigIntegerField(), default=list)

    class Meta:
        verbose_name = _("suggestion")
        constraints = [models.UniqueConstraint(fields=["content_type", "kind", "key"],
                                               name="clip_search_one_suggestion")]
        indexes = [GinIndex(fields=["document"], name="clip_search_suggestion_words"),
                   # The order suggestions are offered in: a common prefix walks it (sql.lexicon).
                   models.Index(F("content_type"), F("products").desc(), Length("text"), F("text"),
                                name="clip_search_suggestion_order")]

    def __str__(self) -> str:
        return f"{self.text} ({self.kind})"


class Synonym(models.Model):
    """Words a shop says mean the same: multi-way (``crimson, scarlet, red``: any finds all) or
    one-way (``rucksack => backpack``: "rucksack" also finds backpacks, not the reverse).

    Applied to the full-text and keyword legs (clip_search.synonyms). The file format is
    Solr's synonyms.txt, one set per line.
    """

    terms = ArrayField(models.CharField(max_length=100), help_text=_(
        "The words or phrases a shopper types; in a multi-way set, all of them mean each other."))
    synonyms = ArrayField(models.CharField(max_length=100), default=list, blank=True, help_text=_(
        "One-way: what the terms also mean. Empty: a multi-way set."))
    enabled = models.BooleanField(_("enabled"), default=True)
    note = models.CharField(_("note"), max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("synonym set")
        ordering = ["terms"]

    def __str__(self) -> str:
        from clip_search.synonyms import format_line

        return format_line(self)


class SearchRecord(models.Model):
    """One storefront search (clip_search.searchlog): what was asked, what was shown, how fast.

    No personal data: the shopper is a salted hash of the session, kept for ``SEARCH_LOG
    ["RETENTION_DAYS"]``. ``id`` is the search id the API returns; events name it.
    """

    class Kind(models.TextChoices):
        TEXT = "text", _("words")
        IMAGE = "image", _("picture")
        SIMILAR = "similar", _("more like this")

    id = models.UUIDField(primary_key=True, editable=False)
    created_at = models.DateTimeField(_("searched at"), db_index=True)
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    encoder = models.ForeignKey(EncoderModel, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.TEXT)
    query = models.CharField(max_length=512, blank=True)
    corrected_query = models.CharField(max_length=512, blank=True)
    filters = models.JSONField(default=dict, blank=True, help_text=_("Facets, filters and sort asked for."))
    legs = ArrayField(models.CharField(max_length=16), default=list, blank=True)
    degraded = models.BooleanField(default=False)
    hits = models.PositiveIntegerField(_("hits"), default=0)
    # The ranked results (object pks, best first; the first SEARCH_LOG["RESULTS_KEPT"]), and for
    # each which legs found it: "v" vector, "f" full text, "k" keyword ("vf": both).
    results = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    found_by = ArrayField(models.CharField(max_length=3), default=list, blank=True)
    latency_ms = models.FloatField(_("latency (ms)"), default=0)
    session = models.CharField(_("session (salted hash)"), max_length=32, blank=True, db_index=True)

    class Meta:
        verbose_name = _("search")
        verbose_name_plural = _("search log")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.query or self.get_kind_display()} ({self.hits} hits, {self.created_at:%Y-%m-%d %H:%M})"

    @property
    def zero_results(self) -> bool:
        return self.hits == 0


class SearchEvent(models.Model):
    """What a shopper did with a result of a search: clicked it, put it in the cart, bought it."""

    class Kind(models.TextChoices):
        CLICK = "click", _("click")
        ADD_TO_CART = "add_to_cart", _("add to cart")
        PURCHASE = "purchase", _("purchase")

    search = models.ForeignKey(SearchRecord, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    object_pk = models.CharField(max_length=64)
    position = models.PositiveIntegerField(help_text=_("1 for the first result of the search."))
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = _("search event")
        ordering = ["created_at"]
        indexes = [models.Index(fields=["search", "kind"], name="clip_search_event_search")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.position} ({self.object_pk})"


class ProductTag(models.Model):
    """A label of one of the shop's label sets (``CLIP_SEARCH["TAGGING"]``) on one product:
    suggested by zero-shot scoring of the product's stored image vectors, then accepted or
    rejected by staff (clip_search.tagging).

    A decision outlives new suggestions and encoder switches: a rejected label is never
    suggested again for the product, an accepted one stays until staff change their mind.
    """

    class Status(models.TextChoices):
        SUGGESTED = "suggested", _("suggested")
        ACCEPTED = "accepted", _("accepted")
        REJECTED = "rejected", _("rejected")

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    object_pk = models.CharField(max_length=64)
    label_set = models.CharField(_("label set"), max_length=64)
    label = models.CharField(_("label"), max_length=200)
    confidence = models.FloatField(_("confidence"), help_text=_(
        "The model's probability for the label when it was last suggested (see MIN_CONFIDENCE)."))
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.SUGGESTED)
    # The weights that suggested it; kept (as None) on a decided tag when its encoder is deleted.
    encoder = models.ForeignKey(EncoderModel, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+")
    suggested_at = models.DateTimeField(_("suggested"))
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    decided_by_name = models.CharField(_("decided by"), max_length=150, blank=True,
                                       help_text=_("Kept if the user is deleted."))
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)

    class Meta:
        verbose_name = _("product tag")
        ordering = ["label_set", "-confidence"]
        constraints = [models.UniqueConstraint(fields=["content_type", "object_pk", "label_set", "label"],
                                               name="clip_search_one_tag_per_label")]
        indexes = [models.Index(fields=["content_type", "label_set", "status", "label"],
                                name="clip_search_tag_facet")]

    def __str__(self) -> str:
        return f"{self.label_set}: {self.label} ({self.object_pk}) [{self.status}]"
