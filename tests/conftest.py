import os

import pytest

REQUIRE_ALL = os.environ.get("CLIP_SEARCH_REQUIRE_ALL") == "1"

# tests/oscar runs in a pytest session of its own, with the Oscar test project's settings
# (scripts/test.sh runs both): Oscar's apps and the demo shop's cannot share one settings module.
OSCAR_SETTINGS = "tests.oscar_shop.settings"
collect_ignore = [] if os.environ.get("DJANGO_SETTINGS_MODULE") == OSCAR_SETTINGS else ["oscar", "oscar_shop"]


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


@pytest.fixture(scope="session")
def pictures(demo_clip):
    """Pictures the demo model passes (``.safe``) and flags (``.knife``): tests/pictures.Pictures."""
    from tests.pictures import Pictures

    return Pictures(demo_clip)


# --------------------------------------------------------------------------- real brokers and workers


@pytest.fixture
def media(tmp_path, settings, demo_model_dir):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def queue(settings):
    from tests.broker import unique_queue

    name = unique_queue()
    settings.CLIP_SEARCH = {**settings.CLIP_SEARCH, "QUEUE": name}
    return name


@pytest.fixture
def redis_url():
    from tests.broker import SHARED_REDIS, port_open

    require(port_open(*SHARED_REDIS), "no Redis on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def published(redis_url, media, queue):
    """This test's saves publish to its own queue on the shared Redis, which nothing consumes:
    ``published.count()`` / ``.pks()`` say what was queued (tests/broker.Published)."""
    from tests.broker import Published, producer

    probe = Published(redis_url, queue)
    with producer(redis_url):
        yield probe
    probe.clear()


@pytest.fixture
def start_worker(tmp_path, media, queue):
    """Start real ``celery worker`` processes on this test's queue; stopped afterwards."""
    from tests.broker import Worker

    workers = []

    def start(broker_url: str, **extra: str) -> Worker:
        worker = Worker(tmp_path / f"worker{len(workers)}.log", broker_url=broker_url, queue=queue,
                        media_root=media, **extra)
        workers.append(worker)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium driven by Playwright (scripts/setup.sh installs it; nothing is downloaded)."""
    import shutil

    require(shutil.which("chromium") is not None or os.path.exists(CHROMIUM),
            "Debian chromium is not installed (scripts/setup.sh installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code, so Django's async-safety guard must not refuse them.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()
        # While Playwright's loop runs, Django keys connections by context, not by thread:
        # close the ones opened meanwhile, or the test database cannot be dropped.
        from django.db import connections

        connections.close_all()


def assert_not_blank(png_path) -> None:
    """A screenshot that shows something: more than a handful of distinct colours."""
    from PIL import Image

    with Image.open(png_path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"{png_path} looks blank ({len(colours)} colours)"


def empty_the_search_log() -> None:
    """Searches other tests sent through the API were written by the log's writer thread on a
    connection of its own (committed): write what is waiting, then delete them all."""
    from clip_search import searchlog
    from clip_search.models import SearchRecord

    searchlog.flush()
    SearchRecord.objects.all().delete()


@pytest.fixture
def empty_search_log(db):
    """The test starts from an empty search log (``empty_the_search_log``)."""
    empty_the_search_log()
