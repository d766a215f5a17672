"""The demo shop with a read replica, set up as README "Operating it" tells a shop to.

``DATABASE_URL`` is the primary (shop_demo.settings reads it), ``REPLICA_DATABASE_URL`` its
streaming standby; both are tests/reliability/replication.py's private servers.
"""

import os

import dj_database_url

from shop_demo.settings import *  # noqa: F403

DATABASES["replica"] = {  # noqa: F405
    **dj_database_url.parse(os.environ["REPLICA_DATABASE_URL"], conn_max_age=0),
    "TEST": {"MIRROR": "default"},
}
DATABASE_ROUTERS = [
    "clip_search.routers.ReadYourWritesRouter",  # first: what clip_search writes, it reads from the primary
    "tests.reliability.replica_router.PrimaryReplicaRouter",
]
