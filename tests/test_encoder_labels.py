"""Encoder rows say where their weights came from, and keep their identity across the change.

PRETRAINED's default (``laion2b_s34b_b79k``) used to be applied to ``local-dir:`` models too: the
row stored it and every label named weights that never loaded; a folder without PRETRAINED was
called "random". These run the real loader, database and command on the demo model.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from clip_search.encoders import get_clip
from clip_search.encoders.loader import EncoderSpec
from clip_search.indexing import register_encoder, spec_for
from clip_search.models import EncoderModel

pytestmark = pytest.mark.django_db

FOLDER = "weights in the folder"
DEFAULT_TAG = "laion2b_s34b_b79k"


@pytest.fixture
def demo_model(settings, demo_model_dir) -> str:
    """The shop's MODEL is the demo's folder and PRETRAINED is left at its default."""
    model = f"local-dir:{demo_model_dir}"
    settings.CLIP_SEARCH = {key: value for key, value in settings.CLIP_SEARCH.items() if key != "PRETRAINED"}
    assert settings.CLIP_SEARCH["MODEL"] == model
    return model


def honest(label: str) -> bool:
    return FOLDER in label and "laion" not in label and "random" not in label


def test_a_local_dir_encoder_row_stores_no_tag_and_says_folder(demo_model):
    encoder = register_encoder()
    assert (encoder.name, encoder.pretrained) == (demo_model, "")
    assert honest(str(encoder)) and encoder.weights_label == FOLDER


def test_an_upgraded_shop_keeps_its_row_for_the_same_weights(demo_model):
    """Rows written before the change hold the default tag: found, not duplicated, not rewritten."""
    fingerprint = get_clip(EncoderSpec(demo_model)).fingerprint
    legacy = EncoderModel.objects.create(name=demo_model, pretrained=DEFAULT_TAG, fingerprint=fingerprint,
                                         dimension=64, is_active=True)
    assert register_encoder().pk == legacy.pk
    assert EncoderModel.objects.count() == 1
    legacy.refresh_from_db()
    assert legacy.pretrained == DEFAULT_TAG and honest(str(legacy))
    assert spec_for(legacy) == EncoderSpec.from_settings()  # one model in memory, not two


def test_other_weights_in_the_same_folder_are_another_encoder(demo_model):
    EncoderModel.objects.create(name=demo_model, pretrained=DEFAULT_TAG, fingerprint="f" * 64, dimension=64,
                                is_active=True)
    encoder = register_encoder()
    assert encoder.fingerprint != "f" * 64 and encoder.pretrained == "" and not encoder.is_active


@pytest.mark.parametrize("pretrained", [None, "", DEFAULT_TAG], ids=["default", "empty", "explicit-tag"])
def test_clip_reindex_names_the_demo_models_weights_honestly(settings, demo_model, pretrained):
    if pretrained is not None:
        settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "PRETRAINED": pretrained}
    out = io.StringIO()
    call_command("clip_reindex", stdout=out, stderr=io.StringIO())
    [line] = [line for line in out.getvalue().splitlines() if line.startswith("Encoder:")]
    assert line.startswith(f"Encoder: {demo_model} / {FOLDER} (") and line.endswith("(active)"), line
    assert honest(line)


def test_the_admin_lists_encoders_by_where_their_weights_come_from(admin_client, demo_model):
    legacy = EncoderModel.objects.create(name=demo_model, pretrained=DEFAULT_TAG, fingerprint="a" * 64,
                                         dimension=64, is_active=True)
    EncoderModel.objects.create(name="ViT-B-32", pretrained="random", fingerprint="b" * 64, dimension=512)
    EncoderModel.objects.create(name="ViT-B-32", pretrained="/srv/models/shop-ft.pt", fingerprint="c" * 64,
                                dimension=512)
    page = admin_client.get(reverse("admin:clip_search_encodermodel_changelist")).content.decode()
    assert FOLDER in page and "<td class=\"field-weights\">random</td>" in page and "shop-ft.pt" in page
    assert DEFAULT_TAG not in page and "/srv/models" not in page
    detail = admin_client.get(reverse("admin:clip_search_encodermodel_change", args=[legacy.pk]))
    assert detail.status_code == 200 and FOLDER in detail.content.decode()
    assert DEFAULT_TAG not in detail.content.decode()


def test_a_pretrained_set_next_to_a_folder_is_a_check_warning(demo_model):
    from clip_search.checks import check_pretrained_applies

    assert check_pretrained_applies() == []  # the default is not the shop's doing
    with override_settings(CLIP_SEARCH={"MODEL": demo_model, "PRETRAINED": DEFAULT_TAG}):
        [warning] = check_pretrained_applies()
    assert warning.id == "clip_search.W003" and DEFAULT_TAG in warning.msg
    with override_settings(CLIP_SEARCH={"MODEL": "ViT-B-32", "PRETRAINED": DEFAULT_TAG}):
        assert check_pretrained_applies() == []
