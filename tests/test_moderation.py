"""The review workflow: quarantine, approve, reject, replace, sample, audit trail, signals.

These tests give the safe class and the category one and the same prompt, so every upload
scores one half and a threshold of 0.4 flags it: they test what happens to a flagged upload,
whatever the model thinks. Whether the project's model flags
drawn knives (and only those) is tested in test_demo_model.py and test_broker.py.
"""

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile

from clip_search import moderation
from clip_search.indexing import embed_objects, iter_objects, register_encoder
from clip_search.models import Embedding, ReviewDecision, ReviewItem
from clip_search.registry import registry
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.catalog import create_product

pytestmark = pytest.mark.django_db(transaction=True)  # on_commit signals fire for real

Status = Embedding.Status


@pytest.fixture(autouse=True)
def media(tmp_path, settings, demo_model_dir):
    settings.MEDIA_ROOT = tmp_path / "media"


def moderation_settings(settings, *, threshold=0.4, sample_rate=0.0):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "MODERATION": {
        **settings.CLIP_SEARCH["MODERATION"], "SAMPLE_RATE": sample_rate,
        "SAFE_PROMPTS": ["a photo of a knife"],
        "CATEGORIES": {"weapons": {"PROMPTS": ["a photo of a knife"], "THRESHOLD": threshold}}}}


def embed(*products):
    registration = registry.get(Product)
    return embed_objects(registration, iter_objects(registration, [p.pk for p in products]),
                         register_encoder())


@pytest.fixture
def received():
    """Every moderation signal sent, as (signal name, sender, object_pk)."""
    sent = []
    receivers = {}
    for name in ("upload_flagged", "review_approved", "review_rejected"):
        def receiver(sender, object_pk, name=name, **kwargs):
            sent.append((name, sender, object_pk))
        receivers[name] = receiver
        getattr(moderation, name).connect(receiver)
    yield sent
    for name, receiver in receivers.items():
        getattr(moderation, name).disconnect(receiver)


@pytest.fixture
def staff():
    return get_user_model().objects.create_user("reviewer", is_staff=True)


@pytest.fixture
def flagged(settings, received):
    moderation_settings(settings)
    product = create_product(generate_catalog(1, seed=4)[0])
    summary = embed(product)
    assert summary.counts["flagged"] == 1
    return product


def test_a_flagged_upload_is_quarantined_with_an_open_review(flagged, received):
    row = flagged.clip_embedding
    image = row.images.get()
    assert row.status == Status.FLAGGED and image.vector is not None and image.verdict == "flagged"
    assert not Embedding.objects.searchable().filter(pk=row.pk).exists()
    item = ReviewItem.objects.get(embedding=row)
    assert item.status == ReviewItem.Status.OPEN and item.reason == ReviewItem.Reason.FLAGGED
    assert item.categories == ["weapons"] and 0 < item.scores["weapons"] <= 1
    assert item.scores == image.moderation_scores
    assert (item.image, item.image_sha256, item.image_name) == (image, image.sha256, flagged.image.name)
    first = item.decisions.get()
    assert first.decision == ReviewDecision.Decision.FLAGGED and first.encoder == row.encoder
    assert received == [("upload_flagged", Product, str(flagged.pk))]


def test_approve_makes_it_searchable_and_records_who_when_and_why(flagged, staff, received):
    item = ReviewItem.objects.get(embedding=flagged.clip_embedding)
    moderation.approve(item, user=staff, note="a cake server, not a knife")
    row = Embedding.objects.get(pk=flagged.clip_embedding.pk)
    assert row.status == Status.INDEXED and Embedding.objects.searchable().filter(pk=row.pk).exists()
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.APPROVED and item.decided_at is not None
    decision = item.decisions.get(decision=ReviewDecision.Decision.APPROVED)
    note = "a cake server, not a knife"
    assert (decision.user, decision.username, decision.note) == (staff, "reviewer", note)
    assert decision.scores == item.scores and decision.encoder == row.encoder
    assert received[-1] == ("review_approved", Product, str(flagged.pk))
    with pytest.raises(ValueError, match="already approved"):
        moderation.reject(item, user=staff)
    # The audit trail outlives the reviewer's account.
    staff.delete()
    decision.refresh_from_db()
    assert decision.user is None and decision.username == "reviewer"


def test_reject_keeps_it_out_and_rerunning_the_same_image_keeps_it_out(flagged, staff, received):
    item = ReviewItem.objects.get(embedding=flagged.clip_embedding)
    moderation.reject(item, user=staff, note="combat knife")
    row = Embedding.objects.get(pk=flagged.clip_embedding.pk)
    assert row.status == Status.REJECTED
    assert not Embedding.objects.searchable().filter(pk=row.pk).exists()
    assert received[-1] == ("review_rejected", Product, str(flagged.pk))
    assert embed(flagged).counts["skipped"] == 1  # same bytes: the decision stands
    assert Embedding.objects.get(pk=row.pk).status == Status.REJECTED
    assert ReviewItem.objects.filter(status=ReviewItem.Status.OPEN).count() == 0


def test_a_new_image_for_a_flagged_product_starts_a_new_review(flagged, staff):
    old_item = ReviewItem.objects.get(embedding=flagged.clip_embedding)
    moderation.reject(old_item, user=staff)
    other = generate_catalog(2, seed=99)[1]
    flagged.image.save("replacement.png", ContentFile(other.png_bytes(64)), save=True)
    embed(flagged)
    items = ReviewItem.objects.filter(embedding=flagged.clip_embedding).order_by("created_at")
    assert [i.status for i in items] == [ReviewItem.Status.REJECTED, ReviewItem.Status.OPEN]
    assert items[1].image_sha256 != old_item.image_sha256
    assert Embedding.objects.get(pk=flagged.clip_embedding.pk).status == Status.FLAGGED


def test_a_clean_replacement_supersedes_the_open_review(flagged, settings):
    moderation_settings(settings, threshold=1.0)  # nothing is flagged any more
    other = generate_catalog(2, seed=99)[1]
    flagged.image.save("replacement.png", ContentFile(other.png_bytes(64)), save=True)
    embed(flagged)
    assert flagged.clip_embedding.status == Status.INDEXED
    assert ReviewItem.objects.get().status == ReviewItem.Status.SUPERSEDED


def test_sampled_uploads_stay_searchable_while_waiting_for_review(settings, staff):
    moderation_settings(settings, threshold=1.0, sample_rate=1.0)
    product = create_product(generate_catalog(1, seed=6)[0])
    embed(product)
    row = product.clip_embedding
    assert row.status == Status.INDEXED and Embedding.objects.searchable().filter(pk=row.pk).exists()
    item = ReviewItem.objects.get(embedding=row)
    assert item.reason == ReviewItem.Reason.SAMPLED and not item.decisions.exists()
    moderation.reject(item, user=staff)
    assert Embedding.objects.get(pk=row.pk).status == Status.REJECTED


def test_sampling_is_deterministic_per_image(settings):
    moderation_settings(settings, threshold=1.0, sample_rate=0.5)
    products = [create_product(spec) for spec in generate_catalog(40, seed=13)]
    embed(*products)
    sampled = set(ReviewItem.objects.values_list("image_sha256", flat=True))
    assert 8 <= len(sampled) <= 32  # about half of 40
    Embedding.objects.all().delete()
    embed(*products)
    assert set(ReviewItem.objects.values_list("image_sha256", flat=True)) == sampled
