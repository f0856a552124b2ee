"""The vendor of `streams demo --scenario vendor-api`: an HTTP API on 127.0.0.1 that must not be
overwhelmed, counting what it receives.

`POST /events` with a JSON object holding an `eventId`:

- at most `rate + burst` calls are admitted in each clock second (the vendor's published limit:
  R a second, with bursts of B); above that it answers **429** with `Retry-After: 1`;
- of the calls it admits, a `failure_rate` share fails with **503** and `Retry-After: 1`
  (a vendor having a bad moment);
- the others are accepted (**200**): the event's id is counted.

`GET /stats` returns its own counts: calls received per clock second (all of them, refused ones
included), each accepted id with how many times it was accepted, and the 429s and 503s. The
scenario is verified from these counts, not from what the function believes it sent.

`VendorProcess` runs it in a process of its own (the scenario's process runs the mapping and
the writer: the vendor's clock and counts must not wait for them).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.local.endpoint import LOOPBACK

__all__ = ["VendorCounts", "VendorProcess", "serve_vendor"]

RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class VendorCounts:
    """What the vendor saw."""

    per_second: dict[int, int]  # clock second -> calls received
    accepted: dict[str, int]  # event id -> times accepted
    too_many: int  # 429s
    unavailable: int  # 503s

    @property
    def peak_per_second(self) -> int:
        return max(self.per_second.values(), default=0)

    @property
    def received(self) -> int:
        return sum(self.per_second.values())


class _Vendor:
    def __init__(self, rate: int, burst: int, failure_rate: float, seed: int) -> None:
        self.limit = rate + burst
        self.failure_rate = failure_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.per_second: Counter[int] = Counter()
        self.accepted: Counter[str] = Counter()
        self.too_many = 0
        self.unavailable = 0

    def answer(self, event_id: str) -> int:
        with self.lock:
            second = int(time.time())
            self.per_second[second] += 1
            if self.per_second[second] > self.limit:
                self.too_many += 1
                return 429
            if self.random.random() < self.failure_rate:
                self.unavailable += 1
                return 503
            self.accepted[event_id] += 1
            return 200

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "perSecond": {str(second): n for second, n in self.per_second.items()},
                "accepted": dict(self.accepted),
                "tooMany": self.too_many,
                "unavailable": self.unavailable,
            }


def serve_vendor(rate: int, burst: int, failure_rate: float, seed: int) -> None:
    """Serve the vendor on 127.0.0.1 (a free port, printed on stdout) until stdin closes."""
    vendor = _Vendor(rate, burst, failure_rate, seed)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: one line per call would drown the scenario's output."""

        def _reply(self, status: int, body: bytes = b"", retry_after: bool = False) -> None:
            self.send_response(status)
            if retry_after:
                self.send_header("Retry-After", str(RETRY_AFTER_SECONDS))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                event = json.loads(self.rfile.read(length))
                event_id = event["eventId"]
            except (ValueError, KeyError, TypeError):
                self._reply(400, b'{"error": "an event is a JSON object with an eventId"}')
                return
            status = vendor.answer(str(event_id))
            self._reply(status, b"{}", retry_after=status in (429, 503))

        def do_GET(self) -> None:
            self._reply(200, json.dumps(vendor.stats()).encode())

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stdin.read()  # until the scenario closes it (or ends)
    server.shutdown()
    server.server_close()


class VendorProcess:
    """The vendor in a child process on 127.0.0.1, until `stop()`."""

    def __init__(self, *, rate: int, burst: int, failure_rate: float, seed: int) -> None:
        serve = (
            "from streams.demo.vendor import serve_vendor; "
            f"serve_vendor({rate}, {burst}, {failure_rate!r}, {seed})"
        )
        self._process = subprocess.Popen(
            [sys.executable, "-c", serve],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        port = self._process.stdout.readline().strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError("the vendor did not start")
        self.url = f"http://{LOOPBACK}:{port}"
        # Never through a proxy: the vendor is on this machine.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def counts(self) -> VendorCounts:
        with self._opener.open(f"{self.url}/stats", timeout=10) as response:
            stats = json.load(response)
        return VendorCounts(
            per_second={int(second): n for second, n in stats["perSecond"].items()},
            accepted=dict(stats["accepted"]),
            too_many=stats["tooMany"],
            unavailable=stats["unavailable"],
        )

    def stop(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> VendorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
