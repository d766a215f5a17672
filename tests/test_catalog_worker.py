"""The cases a real catalog (images in a related table, several per product) used to leave
stale, each run through a real worker on Redis: once through the signals, once with every
signal missed (an import, ``update()``, raw SQL), recovered by a single sweep."""

import pytest
from django.core.files.base import ContentFile

from clip_search.indexing import register_encoder
from clip_search.models import Embedding
from clip_search.registry import registry
from clip_search.search import search
from clip_search.tasks import sweep
from clip_search.verify import compare
from shop_demo.catalog.generator import generate_catalog
from shop_demo.catalog.models import Product
from tests.broker import producer, wait_for
from tests.catalog import add_image, imported, signals_off

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]

Status = Embedding.Status


def converged(*products) -> bool:
    registration = registry.get(Product)
    drift = compare(registration, registration.fetch([p.pk for p in products]), sizes=True)
    return not any(drift.values())


def vector_hits(data: bytes) -> list[int]:
    results = search(Product.objects.all(), image=data, weights={"fulltext": 0, "keyword": 0})
    return [p.pk for p in results]


def the_shop_changes(pictures) -> dict:
    """The four cases, on four products that were indexed with a gallery picture or none."""
    replaced, added, removed, created_late = imported(generate_catalog(4, seed=81))
    with signals_off():
        old_gallery = add_image(replaced, pictures.safe[0], name="old.png")
        only_image = add_image(removed, pictures.safe[1], name="only.png")
        for product in (added, removed, created_late):
            Product.objects.filter(pk=product.pk).update(image="")
    return {"replaced": replaced, "added": added, "removed": removed, "created_late": created_late,
            "old_gallery": old_gallery, "only_image": only_image}


def apply_changes(shop: dict, pictures) -> None:
    shop["old_gallery"].image.save("replacement.png", ContentFile(pictures.safe[2]), save=True)
    add_image(shop["added"], pictures.safe[3], name="first.png")
    shop["only_image"].delete()
    add_image(shop["created_late"], pictures.safe[4], name="late.png")


def check(shop: dict, pictures) -> None:
    products = [shop[name] for name in ("replaced", "added", "removed", "created_late")]
    assert converged(*products)
    replaced = shop["replaced"].clip_embedding
    assert replaced.images.get(position=1).name == shop["old_gallery"].image.name
    assert shop["added"].clip_embedding.status == Status.INDEXED
    assert shop["removed"].clip_embedding.status == Status.NO_IMAGE
    assert shop["removed"].pk not in vector_hits(pictures.safe[1])  # no longer found by its old picture
    assert vector_hits(pictures.safe[4])[0] == shop["created_late"].pk


def test_related_image_changes_are_re_embedded_through_the_signals(redis_url, start_worker, pictures):
    with producer(redis_url):
        register_encoder()
        shop = the_shop_changes(pictures)
        worker = start_worker(redis_url)
        assert sweep() == 4  # the import: no rows yet
        wait_for(lambda: converged(*(shop[k] for k in ("replaced", "added", "removed", "created_late"))),
                 90, f"the import\n{worker.log()}")
        assert shop["added"].clip_embedding.status == Status.NO_IMAGE
        # The dashboard's order: the product was committed and embedded without an image
        # (created_late), and its image row commits afterwards, in a transaction of its own.
        apply_changes(shop, pictures)
        wait_for(lambda: converged(*(shop[k] for k in ("replaced", "added", "removed", "created_late"))),
                 90, f"the changes\n{worker.log()}")
    check(shop, pictures)


def test_related_image_changes_no_signal_reported_converge_after_one_sweep(
        redis_url, start_worker, pictures, settings):
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "SWEEP": {"VERIFY_PER_RUN": 1000, "PENDING_AFTER": 900}}
    with producer(redis_url):
        register_encoder()
        shop = the_shop_changes(pictures)
        worker = start_worker(redis_url)
        sweep()
        products = [shop[k] for k in ("replaced", "added", "removed", "created_late")]
        wait_for(lambda: converged(*products), 90, f"the import\n{worker.log()}")
        with signals_off():
            apply_changes(shop, pictures)
        assert not converged(*products)
        assert sweep() == 4  # one sweep finds all four
        wait_for(lambda: converged(*products), 90, f"the sweep's tasks\n{worker.log()}")
    check(shop, pictures)
