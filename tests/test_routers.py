"""clip_search.routers: inside ``primary_reads()`` a read goes where the model's writes go.

The router is consulted like any of the shop's (no database is opened here); the real
primary and standby are tests/reliability/test_read_replica.py's.
"""

import threading

from django.db import router
from django.test import override_settings

from clip_search.models import Embedding
from clip_search.routers import primary_reads
from shop_demo.catalog.models import Product

REPLICA_ROUTERS = ["clip_search.routers.ReadYourWritesRouter",
                   "tests.reliability.replica_router.PrimaryReplicaRouter"]


@override_settings(DATABASE_ROUTERS=REPLICA_ROUTERS)
def test_reads_go_to_the_shops_replica_except_inside_primary_reads():
    assert [router.db_for_read(m) for m in (Product, Embedding)] == ["replica", "replica"]
    with primary_reads():
        assert [router.db_for_read(m) for m in (Product, Embedding)] == ["default", "default"]
        assert router.db_for_write(Product) == "default"
    assert router.db_for_read(Product) == "replica"


@override_settings(DATABASE_ROUTERS=REPLICA_ROUTERS)
def test_primary_reads_is_a_decorator_and_stays_in_its_thread():
    seen = {}

    @primary_reads()
    def indexing():
        other = threading.Thread(target=lambda: seen.update(other=router.db_for_read(Product)))
        other.start()
        other.join()
        seen["inside"] = router.db_for_read(Product)

    indexing()
    assert seen == {"inside": "default", "other": "replica"}  # a web thread meanwhile still reads the replica


def test_without_a_replica_router_nothing_changes():
    with primary_reads():
        assert router.db_for_read(Product) == "default"
