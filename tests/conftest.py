import os

import pytest

REQUIRE_ALL = os.environ.get("CLIP_SEARCH_REQUIRE_ALL") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip when a service or tool is missing here; under CI (CLIP_SEARCH_REQUIRE_ALL=1) fail."""
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"CLIP_SEARCH_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def demo_model_dir():
    """The project's own small CLIP, trained on the drawn catalog (cached under .data/models)."""
    from clip_search.training import train
    from shop_demo.catalog.training import demo_training_args

    return train(demo_training_args(), log=lambda line: None).output


@pytest.fixture(scope="session")
def demo_clip(demo_model_dir):
    from clip_search.encoders import EncoderSpec, load_clip

    return load_clip(EncoderSpec(f"local-dir:{demo_model_dir}"))
