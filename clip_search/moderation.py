"""Zero-shot moderation: score an image vector against safety prompts, decide, and review.

Each category's prompts are embedded and averaged (a prompt ensemble); each safe prompt is a
class of its own. Each category gets a probability the way the model scores (``zeroshot``);
at or over the category's THRESHOLD the upload is flagged:
- CLIP: a softmax over [safe prompts…, categories…] with the model's logit scale. THRESHOLD is
  the category's share of that softmax: how much more the image looks like the category than
  like the safe prompts and the other categories.
- SigLIP (a model with a learned ``logit_bias``): ``sigmoid(logit_scale · cos + logit_bias)``
  of the category alone, as SigLIP was trained. THRESHOLD is the model's probability that the
  image shows the category, whatever the safe prompts say (they take no part); trained SigLIP
  models give clear matches far lower values than a softmax does, so set it per model.
Moderation is per image, quarantine per product (``rows.derive_status``). Staff decisions go
through ``approve`` / ``reject``: bound to the reviewed image (refused once the product no
longer holds it), recorded in the audit trail, followed by the signals a shop listens to
(for example to unpublish a product). Only users with ``clip_search.change_reviewitem``
reach them from the admin and the API.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from clip_search.conf import clip_settings
from clip_search.zeroshot import ensemble, probabilities

# sender: the shop's model class; kwargs: object_pk, embedding, item (ReviewItem), scores.
upload_flagged = Signal()
review_approved = Signal()
review_rejected = Signal()


@dataclass
class Verdict:
    scores: dict[str, float]
    flagged: list[str]

    @property
    def is_flagged(self) -> bool:
        return bool(self.flagged)


class Moderator:
    """Judges image vectors against the prompts of ``options`` (the settings' MODERATION).
    ``logit_scale`` is the model's (``LoadedClip.logit_scale``); its ``logit_bias``, if it has
    one, comes with the text encoder's model and selects SigLIP's sigmoid."""

    def __init__(self, text_encoder, logit_scale: float, options: dict | None = None) -> None:
        options = options or clip_settings.MODERATION
        self.enabled = bool(options["ENABLED"])
        self.categories = list(options["CATEGORIES"])
        self.thresholds = {name: float(c["THRESHOLD"]) for name, c in options["CATEGORIES"].items()}
        self.sample_rate = float(options["SAMPLE_RATE"])
        self.logit_scale = float(logit_scale)
        self.logit_bias = text_encoder.clip.logit_bias
        safe = text_encoder.encode(list(options["SAFE_PROMPTS"]))
        unsafe = [ensemble(text_encoder.encode(list(c["PROMPTS"])))
                  for c in options["CATEGORIES"].values()]
        self._classes = np.vstack([safe, *unsafe]) if unsafe else safe
        self._first_category = len(safe)

    def judge(self, vectors: np.ndarray) -> list[Verdict]:
        if not self.enabled or not self.categories or len(vectors) == 0:
            return [Verdict(scores={}, flagged=[]) for _ in range(len(vectors))]
        cosines = vectors.astype(np.float64) @ self._classes.T.astype(np.float64)
        verdicts = []
        for row in probabilities(cosines, self.logit_scale, self.logit_bias)[:, self._first_category:]:
            probability = dict(zip(self.categories, row, strict=True))
            flagged = [name for name, p in probability.items() if p >= self.thresholds[name]]
            # Four significant digits for the record: rounding to decimals would show 0.0.
            scores = {name: float(f"{p:.4g}") for name, p in probability.items()}
            verdicts.append(Verdict(scores=scores, flagged=flagged))
        return verdicts

    def sampled(self, image_sha256: str) -> bool:
        """Deterministic per image: the same upload is always sampled or never."""
        return self.sample_rate > 0 and int(image_sha256[:8], 16) / 0xFFFFFFFF < self.sample_rate


class DecisionRefused(ValueError):
    """A staff decision that cannot apply; ``code`` is stable for the API (409)."""

    code = "refused"


class AlreadyDecided(DecisionRefused):
    code = "already_decided"


class ImageChanged(DecisionRefused):
    """The product no longer holds the reviewed image: the decision would land on another."""

    code = "image_changed"


def supersede_reviews(embedding_ids: list[int], keep: list[int] | None = None) -> int:
    """Close the open items of images these products no longer have (all but ``keep``)."""
    from clip_search.models import ReviewItem

    items = ReviewItem.objects.filter(embedding_id__in=embedding_ids, status=ReviewItem.Status.OPEN)
    if keep is not None:
        items = items.exclude(image__in=keep)
    return items.update(status=ReviewItem.Status.SUPERSEDED, decided_at=timezone.now())


def open_review(image, verdict: Verdict, reason: str):
    """The open item for this image (one per image and sha256), created on first sight; a
    flagged one starts the audit trail."""
    from clip_search.models import ReviewDecision, ReviewItem

    item, created = ReviewItem.objects.get_or_create(
        embedding_id=image.embedding_id, image=image, image_sha256=image.sha256,
        status=ReviewItem.Status.OPEN,
        defaults={"reason": reason, "categories": verdict.flagged, "scores": verdict.scores,
                  "image_name": image.name},
    )
    if created and reason == ReviewItem.Reason.FLAGGED:
        ReviewDecision.objects.create(item=item, decision=ReviewDecision.Decision.FLAGGED,
                                      scores=verdict.scores, encoder_id=image.encoder_id)
    return item, created


def _decide(item, decision: str, user, note: str, signal: Signal):
    """Record a decision on the item's image, under the product row's lock (``rows``' order:
    product row, then review item and image), if the product still holds that very image."""
    from clip_search import rows
    from clip_search.models import Embedding, ImageEmbedding, ReviewDecision, ReviewItem

    def decide():
        embedding_id = ReviewItem.objects.values_list("embedding_id", flat=True).get(pk=item.pk)
        embedding = rows.lock(embedding_id)
        locked = ReviewItem.objects.select_for_update(of=("self",)).select_related("image").get(pk=item.pk)
        if locked.status != ReviewItem.Status.OPEN:
            raise AlreadyDecided(f"Review item {locked.pk} is already {locked.status}.")
        image = locked.image
        if image is None or image.sha256 != locked.image_sha256 or image.name != locked.image_name:
            locked.status, locked.decided_at = ReviewItem.Status.SUPERSEDED, timezone.now()
            locked.save(update_fields=["status", "decided_at"])
            return None  # committed as superseded, then refused below
        locked.status, locked.decided_at = decision, timezone.now()
        locked.save(update_fields=["status", "decided_at"])
        if decision == ReviewItem.Status.REJECTED:
            image.verdict = ImageEmbedding.Verdict.REJECTED
        elif image.verdict == ImageEmbedding.Verdict.FLAGGED:
            image.verdict = ImageEmbedding.Verdict.APPROVED
        image.save(update_fields=["verdict"])
        # A pending product has a newer image waiting for the worker: it stays hidden until
        # that image is scored, whatever is decided about this one.
        if embedding.status != Embedding.Status.PENDING:
            verdicts = list(embedding.images.values_list("verdict", flat=True))
            rows.set_status(embedding.pk, rows.derive_status(verdicts))
        ReviewDecision.objects.create(
            item=locked, decision=decision, user=user if user and user.pk else None,
            username=getattr(user, "get_username", lambda: "")() if user else "",
            scores=locked.scores, encoder_id=embedding.encoder_id, note=note,
        )
        model = embedding.content_type.model_class()
        transaction.on_commit(lambda: signal.send(sender=model, object_pk=embedding.object_pk,
                                                  embedding=embedding, item=locked, scores=locked.scores))
        return locked

    try:
        decided = rows.retrying(decide)
    except ReviewItem.DoesNotExist as error:
        raise AlreadyDecided(f"Review item {item.pk} no longer exists.") from error
    if decided is None:
        raise ImageChanged("The product no longer has this image; its new image is reviewed on its own.")
    return decided


def approve(item, user=None, note: str = ""):
    """Staff approve the item's image: the product is searchable once all its images are."""
    from clip_search.models import ReviewItem

    return _decide(item, ReviewItem.Status.APPROVED, user, note, review_approved)


def reject(item, user=None, note: str = ""):
    """Staff reject the item's image: the product stays out of search until that image goes."""
    from clip_search.models import ReviewItem

    return _decide(item, ReviewItem.Status.REJECTED, user, note, review_rejected)


def reviewed_image_url(item, obj, registration) -> str | None:
    """The URL of the reviewed image among the product's current images, if it still has it."""
    for image in registration.source_images(obj):
        if image.identity == item.image_name:
            return image.url
    return None

