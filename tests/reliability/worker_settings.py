"""The demo's settings for a test worker that must see a killed worker's task again soon.

kombu's Redis transport looks for unacknowledged messages older than ``visibility_timeout``
only on every ``unacked_restore_throttle``-th tick of ``unacked_restore_interval`` seconds:
10 × 10 s by default, so a redelivery waits up to ~100 s more. Here: every second.
"""

import os

from shop_demo.settings import *  # noqa: F403

CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", 5)),
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
