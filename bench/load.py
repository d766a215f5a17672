"""Load: concurrent storefront clients against a live shop on loopback; p50/p95 and errors.

    cd /work/main && PYTHONPATH=. .venv/bin/python bench/load.py --serve            # 20 clients, 60 s
    PYTHONPATH=. .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --clients 5 --seconds 10

Each client loops over a mix of text search (60 %), image search (20 %, a drawn product
picture as a multipart upload) and "more like this" (20 %) until the time is up or it has sent
``--max-requests``. ``--serve`` starts the demo shop itself (``manage.py runserver`` over the
demo's database; ``bench/load_settings.py`` lifts the throttle and turns persistent database
connections off, see there) on a free loopback port;
``--url`` hits a running one, where the shop's throttle answers 429, counted apart as
"throttled". Anything else that is not a 200 (or no answer at all) is an error; the exit status
is 1 if there was one. Loopback only: any other host is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["red mug", "blue backpack", "leather watch", "green lamp", "white sneaker", "black hat",
         "steel bottle", "striped umbrella", "wooden chair", "yellow t-shirt", "mug", "knife"]
MIX = (("text", 0.6), ("image", 0.2), ("similar", 0.2))
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class Report:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # seconds, per kind
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, seconds: float, status: int | str) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            self.statuses[status] += 1
            if status not in (200, 429):
                self.errors.append(f"{kind}: {status}")

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def percentile_ms(self, q: float, kind: str | None = None) -> float:
        samples = sorted(self.latencies.get(kind, []) if kind else
                         [s for values in self.latencies.values() for s in values])
        if not samples:
            return float("nan")
        return samples[min(len(samples) - 1, round(q / 100 * (len(samples) - 1)))] * 1000

    def summary(self) -> str:
        lines = [f"requests {self.requests}, errors {len(self.errors)}, "
                 f"throttled {self.statuses[429]}, statuses {dict(self.statuses)}",
                 f"all      p50 {self.percentile_ms(50):7.1f} ms  p95 {self.percentile_ms(95):7.1f} ms"]
        for kind in sorted(self.latencies):
            lines.append(f"{kind:8} p50 {self.percentile_ms(50, kind):7.1f} ms  "
                         f"p95 {self.percentile_ms(95, kind):7.1f} ms  n={len(self.latencies[kind])}")
        if self.errors:
            lines.append("first errors: " + "; ".join(self.errors[:5]))
        return "\n".join(lines)


def multipart(field_name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    return body + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(base_url: str, kind: str, rng: random.Random, images: list[bytes],
            product_ids: list[int | str], timeout: float) -> int | str:
    """One storefront request; its HTTP status, or the exception's name when there was none."""
    api = f"{base_url}/api/v1"
    if kind == "text":
        req = urllib.request.Request(f"{api}/search/?" + urllib.parse.urlencode({"q": rng.choice(WORDS)}))
    elif kind == "image":
        body, content_type = multipart("image", "query.png", rng.choice(images))
        req = urllib.request.Request(f"{api}/search/image/", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    else:
        req = urllib.request.Request(f"{api}/products/{rng.choice(product_ids)}/similar/")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            json.loads(response.read())
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code
    except (OSError, ValueError) as error:  # refused, reset, timed out, not JSON
        return type(error).__name__


def run_load(base_url: str, *, clients: int, seconds: float, images: list[bytes],
             product_ids: list[int | str], max_requests: int = 10_000, seed: int = 0,
             timeout: float = 30) -> Report:
    """``clients`` threads, each until ``seconds`` have passed or it sent ``max_requests``."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"load runs only against loopback, not {host!r}")
    report, deadline = Report(), time.monotonic() + seconds
    kinds, weights = zip(*MIX, strict=True)

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        for _ in range(max_requests):
            if time.monotonic() >= deadline:
                return
            kind = rng.choices(kinds, weights)[0]
            start = time.perf_counter()
            status = request(base_url, kind, rng, images, product_ids, timeout)
            report.add(kind, time.perf_counter() - start, status)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    return report


def drawn_images(count: int = 16) -> list[bytes]:
    """Pictures like the demo catalog's (the same generator, another seed)."""
    from shop_demo.catalog.generator import generate_catalog

    return [spec.png_bytes(224) for spec in generate_catalog(count, seed=777)]


def indexed_product_ids(base_url: str) -> list[int | str]:
    """Products "more like this" can start from: hits of a few searches, which are all indexed."""
    ids: list[int | str] = []
    for words in WORDS[:6]:
        query = urllib.parse.urlencode({"q": words, "limit": 20})
        with urllib.request.urlopen(f"{base_url}/api/v1/search/?{query}", timeout=30) as response:
            ids += [hit.get("id", hit.get("pk")) for hit in json.loads(response.read())["results"]]
    if not ids:
        raise SystemExit("The shop has no searchable products: load the demo catalog (scripts/demo.sh).")
    return sorted(set(ids), key=str)


def serve(port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.load_settings", "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return server
        if server.poll() is not None:
            raise SystemExit(f"runserver exited with {server.returncode}")
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("runserver did not start in 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running shop, e.g. http://127.0.0.1:8000")
    parser.add_argument("--serve", action="store_true", help="start the demo shop unthrottled")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=10_000, help="per client")
    args = parser.parse_args()
    server = None
    if args.serve:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log_path = Path(tempfile.gettempdir()) / f"clip-search-load-{port}.log"
        server = serve(port, log_path)
        base_url = f"http://127.0.0.1:{port}"
    else:
        base_url = (args.url or "http://127.0.0.1:8000").rstrip("/")
    try:
        product_ids = indexed_product_ids(base_url)
        report = run_load(base_url, clients=args.clients, seconds=args.seconds, images=drawn_images(),
                          product_ids=product_ids, max_requests=args.max_requests)
    finally:
        if server:
            server.terminate()
            server.wait(30)
    print(f"{args.clients} clients x {args.seconds:g} s against {base_url} "
          f"({len(product_ids)} products to start 'similar' from), mix {dict(MIX)}")
    print(report.summary())
    if server and report.errors:
        print(f"server log: {log_path}")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
