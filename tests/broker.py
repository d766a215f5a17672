"""Real Celery workers and Redis brokers for tests: subprocesses, never eager mode.

A worker is ``celery -A <project> worker`` in its own process (the demo shop, or the Oscar test
project), pointed at the test database
(``DATABASE_URL``), the test's media folder and a queue of its own, exactly as a shop runs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
SHARED_REDIS = ("127.0.0.1", 6379)


def port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The URL of the database this test runs against (the test database, not the dev one)."""
    db, options = connection.settings_dict, connection.settings_dict.get("OPTIONS", {})
    host = quote(db["HOST"] or options.get("host", ""), safe="")  # a socket folder, percent-encoded
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    port = db.get("PORT") or options.get("port")
    port = f":{port}" if port else ""
    return f"postgresql://{auth}@{host}{port}/{db['NAME']}"


def unique_queue() -> str:
    return f"clip_search_test_{uuid.uuid4().hex[:10]}"


def process_env(*, broker_url: str, queue: str, media_root: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": broker_url, "CLIP_SEARCH_QUEUE": queue, "DJANGO_MEDIA_ROOT": str(media_root),
        "PYTHONPATH": str(ROOT), **extra,
    }


def celery_app() -> str:
    """The project's Celery app module: the demo shop's, or the Oscar test project's (the
    environment says which; ``settings.SETTINGS_MODULE`` is None under override_settings)."""
    return os.environ["DJANGO_SETTINGS_MODULE"].rsplit(".", 1)[0]


class Worker:
    """One ``celery worker`` process (solo pool: one task at a time, like prefetch 1)."""

    def __init__(self, log_path: Path, **env: object) -> None:
        self.log_path = log_path
        self.env = process_env(**env)
        self.process: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 90) -> Worker:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", celery_app(), "worker",
             "-Q", self.env["CLIP_SEARCH_QUEUE"],
             "-P", "solo", "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "info",
             "-n", f"test-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: b" ready." in self.log_path.read_bytes() or self.process.poll() is not None,
                 ready_timeout, "worker start")
        assert self.process.poll() is None, f"the worker exited:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


class RedisServer:
    """A private redis-server on a free port, so a test can stop "the broker" and start it again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), 10, "redis-server start")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout}s")
        time.sleep(interval)


@contextlib.contextmanager
def producer(broker_url: str) -> Iterator[None]:
    """Point this process's Celery app (the one the signal processor publishes with) at a broker."""
    import importlib

    app = importlib.import_module(f"{celery_app()}.celery").app

    def reset_pools() -> None:
        from kombu import pools

        pools.reset()  # closes kombu's global connection and producer pools
        app._after_fork()  # and the app forgets its references to them

    previous = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url, app.conf.broker_transport_options = broker_url, {"visibility_timeout": 600}
    reset_pools()
    try:
        yield
    finally:
        reset_pools()
        app.conf.broker_url, app.conf.broker_transport_options = previous


class Published:
    """The embed tasks published to one queue of a real Redis that no worker consumes: how many
    and for which objects, in publish order (kombu's Redis transport: a list of JSON messages,
    newest first, each body base64 JSON ``[args, kwargs, embed]``)."""

    def __init__(self, url: str, queue: str) -> None:
        import redis

        self.client, self.queue = redis.Redis.from_url(url), queue

    def count(self) -> int:
        return self.client.llen(self.queue)

    def pks(self) -> list[str]:
        import base64
        import json

        messages = [json.loads(m) for m in reversed(self.client.lrange(self.queue, 0, -1))]
        return [pk for m in messages for pk in json.loads(base64.b64decode(m["body"]))[0][1]]

    def clear(self) -> None:
        self.client.delete(self.queue)
