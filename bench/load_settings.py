"""The demo shop for ``bench/load.py --serve``: the API throttle lifted (a load run measures the
server, not the 429s; the throttle itself is tested in tests/)."""

from shop_demo.settings import *  # noqa: F403
from shop_demo.settings import REST_FRAMEWORK

REST_FRAMEWORK = {**REST_FRAMEWORK,
                  "DEFAULT_THROTTLE_RATES": {"clip_search": None, "clip_search_image": None}}
