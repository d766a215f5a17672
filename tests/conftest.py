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
