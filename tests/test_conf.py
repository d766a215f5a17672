import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from clip_search.conf import DEFAULTS, clip_settings


def test_defaults_when_unset():
    with override_settings(CLIP_SEARCH={}):
        assert clip_settings.MODEL == DEFAULTS["MODEL"]
        assert clip_settings.SEARCH["RRF_K"] == 60


def test_nested_values_merge_with_defaults_and_reload_on_setting_changed():
    with override_settings(CLIP_SEARCH={"SEARCH": {"RRF_K": 30}}):
        assert clip_settings.SEARCH["RRF_K"] == 30
        assert clip_settings.SEARCH["EF_SEARCH"] == DEFAULTS["SEARCH"]["EF_SEARCH"]
    assert clip_settings.SEARCH["RRF_K"] == 60


def test_moderation_categories_are_replaced_whole():
    categories = {"nudity": {"PROMPTS": ["a nude photo"], "THRESHOLD": 0.7}}
    with override_settings(CLIP_SEARCH={"MODERATION": {"CATEGORIES": categories}}):
        assert clip_settings.MODERATION["CATEGORIES"] == categories
        assert clip_settings.MODERATION["SAMPLE_RATE"] == 0.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"MODELL": "x"}, "unknown setting 'MODELL'"),
        ({"SEARCH": {"RRF": 1}}, "CLIP_SEARCH['SEARCH']: unknown setting 'RRF'"),
        ({"SEARCH": {"DEPTH": {"vector": 0}}}, "['SEARCH']['DEPTH']['vector']"),
        ({"BATCH_SIZE": "32"}, "['BATCH_SIZE']"),
        ({"PRECISION": "fp8"}, "['PRECISION']"),
        ({"IMAGE": {"FORMATS": ["JPEG", "eps"]}}, "EPS"),
        ({"HNSW": {"M": 16, "EF_CONSTRUCTION": 8}}, "EF_CONSTRUCTION"),
        ({"MODERATION": {"CATEGORIES": {"x": {"PROMPTS": [], "THRESHOLD": 0.5}}}}, "['x']['PROMPTS']"),
        ({"SEARCH": {"ITERATIVE_SCAN": "yes"}}, "ITERATIVE_SCAN"),
        ({"TEXT_ENCODER": {"BACKEND": "tensorrt"}}, "['TEXT_ENCODER']['BACKEND']"),
        ({"IMAGE_ENCODER": {"THREADS": 0}}, "['IMAGE_ENCODER']['THREADS']"),
        ({"IMAGE_ENCODER": {"DECODE_THREADS": 0}}, "['IMAGE_ENCODER']['DECODE_THREADS']"),
        ({"IMAGE_ENCODER": {"PREFETCH_BATCHES": -1}}, "['IMAGE_ENCODER']['PREFETCH_BATCHES']"),
        ({"IMAGE_ENCODER": {"DEVICE": "tpu"}}, "['IMAGE_ENCODER']['DEVICE'] must be"),
        ({"IMAGE_ENCODER": {"PRECISION": "int4"}}, "['IMAGE_ENCODER']['PRECISION']"),
        ({"IMAGE_ENCODER": {"DEVICE": "cuda", "BACKEND": "onnx"}}, "needs BACKEND 'torch'"),
    ],
)
def test_invalid_settings_name_the_key(value, message):
    with override_settings(CLIP_SEARCH=value):
        with pytest.raises(ImproperlyConfigured) as error:
            clip_settings.MODEL  # noqa: B018
    assert message in str(error.value)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        clip_settings.NOPE  # noqa: B018
