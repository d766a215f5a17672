"""Zero-shot moderation: score an image vector against safety prompts, decide, and review.

Each category's prompts are embedded and averaged (a prompt ensemble); each safe prompt is a
class of its own. A softmax over [safe prompts…, categories…] with the model's logit scale
gives each category a probability; over its threshold the upload is flagged.
Staff decisions go through ``approve`` / ``reject``, which keep the audit trail and send
the signals a shop listens to (for example to unpublish a product).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from clip_search.conf import clip_settings

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
    def __init__(self, text_encoder, logit_scale: float, options: dict | None = None) -> None:
        options = options or clip_settings.MODERATION
        self.enabled = bool(options["ENABLED"])
        self.categories = list(options["CATEGORIES"])
        self.thresholds = {name: float(c["THRESHOLD"]) for name, c in options["CATEGORIES"].items()}
        self.sample_rate = float(options["SAMPLE_RATE"])
        self.logit_scale = float(logit_scale)
        safe = text_encoder.encode(list(options["SAFE_PROMPTS"]))
        unsafe = [_ensemble(text_encoder.encode(list(c["PROMPTS"])))
                  for c in options["CATEGORIES"].values()]
        self._classes = np.vstack([safe, *unsafe]) if unsafe else safe
        self._first_category = len(safe)

    def judge(self, vectors: np.ndarray) -> list[Verdict]:
        if not self.enabled or not self.categories or len(vectors) == 0:
            return [Verdict(scores={}, flagged=[]) for _ in range(len(vectors))]
        # float64: a confident model puts a category at exp(-100), which float32 flushes to 0.
        logits = self.logit_scale * vectors.astype(np.float64) @ self._classes.T.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        verdicts = []
        for row in probabilities[:, self._first_category:]:
            probability = dict(zip(self.categories, row, strict=True))
            flagged = [name for name, p in probability.items() if p >= self.thresholds[name]]
            # Four significant digits for the record: rounding to decimals would show 0.0.
            scores = {name: float(f"{p:.4g}") for name, p in probability.items()}
            verdicts.append(Verdict(scores=scores, flagged=flagged))
        return verdicts

    def sampled(self, image_sha256: str) -> bool:
        """Deterministic per image: the same upload is always sampled or never."""
        return self.sample_rate > 0 and int(image_sha256[:8], 16) / 0xFFFFFFFF < self.sample_rate


def _ensemble(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.mean(axis=0)
    return mean / np.linalg.norm(mean)


def supersede_reviews(embedding) -> int:
    """Close the open review items of images the product no longer has."""
    from clip_search.models import ReviewItem

    return embedding.review_items.filter(status=ReviewItem.Status.OPEN).exclude(
        image_sha256=embedding.image_sha256).update(status=ReviewItem.Status.SUPERSEDED,
                                                    decided_at=timezone.now())


def open_review(embedding, verdict: Verdict, reason: str):
    """Create the review item for a new image; an older open item of the product is superseded."""
    from clip_search.models import ReviewDecision, ReviewItem

    supersede_reviews(embedding)
    item, created = ReviewItem.objects.get_or_create(
        embedding=embedding, image_sha256=embedding.image_sha256, status=ReviewItem.Status.OPEN,
        defaults={"reason": reason, "categories": verdict.flagged, "scores": verdict.scores},
    )
    if created and reason == ReviewItem.Reason.FLAGGED:
        ReviewDecision.objects.create(item=item, decision=ReviewDecision.Decision.FLAGGED,
                                      scores=verdict.scores, encoder=embedding.encoder)
    return item, created


def _decide(item, decision: str, user, note: str, status: str, signal: Signal):
    from clip_search.models import Embedding, ReviewDecision, ReviewItem

    with transaction.atomic():
        item = ReviewItem.objects.select_for_update().select_related("embedding").get(pk=item.pk)
        if item.status != ReviewItem.Status.OPEN:
            raise ValueError(f"Review item {item.pk} is already {item.status}.")
        item.status = decision
        item.decided_at = timezone.now()
        item.save(update_fields=["status", "decided_at"])
        embedding = item.embedding
        if item.reason == ReviewItem.Reason.FLAGGED or status == Embedding.Status.REJECTED:
            embedding.status = status
            embedding.save(update_fields=["status", "updated_at"])
        ReviewDecision.objects.create(
            item=item, decision=decision, user=user if user and user.pk else None,
            username=getattr(user, "get_username", lambda: "")() if user else "",
            scores=item.scores, encoder=embedding.encoder, note=note,
        )
        model = embedding.content_type.model_class()
        transaction.on_commit(lambda: signal.send(sender=model, object_pk=embedding.object_pk,
                                                  embedding=embedding, item=item, scores=item.scores))
    return item


def approve(item, user=None, note: str = ""):
    """Staff approve: the product becomes searchable."""
    from clip_search.models import Embedding, ReviewItem

    return _decide(item, ReviewItem.Status.APPROVED, user, note, Embedding.Status.INDEXED, review_approved)


def reject(item, user=None, note: str = ""):
    """Staff reject: the product stays out of search until a new image is uploaded."""
    from clip_search.models import Embedding, ReviewItem

    return _decide(item, ReviewItem.Status.REJECTED, user, note, Embedding.Status.REJECTED, review_rejected)
