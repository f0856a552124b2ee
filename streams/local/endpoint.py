"""The embedded AWS endpoint: moto's server on 127.0.0.1, and the record commands find it by.

`start_endpoint` runs moto's server (its real WSGI application) in this process;
`EndpointProcess` in a child process. `streams local up` records its endpoint in
`.streams/local.json` (in the directory it was started from) so that other commands started
there find it (`read_recorded_endpoint`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import boto3

from streams.errors import UserError
from streams.mapping.state.lease import pid_alive

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

    from streams.local.stack import DeployedStack

__all__ = [
    "LOOPBACK",
    "STATE_FILE",
    "AtomicDynamoDB",
    "EmbeddedEndpoint",
    "EndpointProcess",
    "RecordedEndpoint",
    "endpoint_recorded",
    "forget_endpoint",
    "local_session",
    "read_recorded_endpoint",
    "record_endpoint",
    "region_or_default",
    "serve_endpoint",
    "start_endpoint",
]

DEFAULT_REGION = "us-east-1"

STATE_FILE = Path(".streams") / "local.json"

LOOPBACK = "127.0.0.1"

LOCAL_EXTRA_HINT = "install the local extra: pip install 'streams[local]'"


# moto's static test credentials: moto accepts any, and a fresh machine has none.
_LOCAL_ACCESS_KEY = _LOCAL_SECRET_KEY = "testing"


class _Endpoint:
    """An endpoint at `url` until `stop()`, also as a context."""

    url: str

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmbeddedEndpoint(_Endpoint):
    """moto's server, serving from a thread of this process on 127.0.0.1 until `stop()`."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"moto-server-{port}", daemon=True
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait(self) -> None:
        """Block until `stop()` (from another thread or a signal handler)."""
        self._thread.join()


# DynamoDB's own API (not DynamoDB Streams'): its writes must apply one at a time.
_DYNAMODB_TARGET = "DynamoDB_20120810."
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AtomicDynamoDB:
    """A WSGI wrapper that serves moto's DynamoDB requests one at a time.

    AWS applies each conditional write, `ADD` and transaction atomically; moto applies them as
    a read, then a write, with no lock, so two requests at once can both pass a condition only
    one should (two holders of one lease, two callers taking the last token of a rate limit, a
    lost `ADD`). Served one at a time, moto's answers are AWS's. Other services, and their long
    polls, are not held up.
    """

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith(_DYNAMODB_TARGET):
            with self._lock:  # the whole answer is made under the lock
                return list(self._app(environ, start_response))
        return self._app(environ, start_response)


def start_endpoint(port: int = 0) -> EmbeddedEndpoint:
    """Start moto's server on 127.0.0.1:`port` (0: any free port), its DynamoDB atomic."""
    try:
        # The `local` extra; imported on use, since moto takes a second to import.
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server
    except ImportError as error:
        raise UserError(f"moto's server is not installed ({error}): {LOCAL_EXTRA_HINT}") from None

    class QuietRequestHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """One line per request would drown the commands' own output."""

    # Bind here rather than in werkzeug, which exits the process when the port is taken.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(socket.SOMAXCONN)
        server = make_server(
            LOOPBACK,
            port,
            AtomicDynamoDB(DomainDispatcherApplication(create_backend_app)),
            threaded=True,
            request_handler=QuietRequestHandler,
            fd=listener.fileno(),
        )
    except OSError as error:
        raise UserError(
            f"cannot listen on {LOOPBACK}:{port} ({error.strerror}): "
            "choose another --port (0 picks a free one)"
        ) from None
    finally:
        listener.close()  # the server holds its own duplicate of the socket
    return EmbeddedEndpoint(server)


def serve_endpoint(port: int) -> None:
    """Serve `start_endpoint(port)` in this process until it is terminated (EndpointProcess)."""
    endpoint = start_endpoint(port)
    signal.signal(signal.SIGTERM, lambda signum, frame: endpoint.stop())
    endpoint.wait()


class EndpointProcess(_Endpoint):
    """moto's server in a child process on 127.0.0.1 until `stop()`.

    For work that keeps this process busy (the demo runs the mapping, the writer and the
    monitor here): moto then gets a core of its own instead of sharing this interpreter.
    """

    def __init__(self, port: int = 0, *, start_timeout: float = 60.0) -> None:
        if port == 0:
            with socket.socket() as probe:  # a free port; moto binds it a moment later
                probe.bind((LOOPBACK, 0))
                port = int(probe.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{port}"
        serve = f"import streams.local.endpoint as local; local.serve_endpoint({port})"
        self._process = subprocess.Popen(
            [sys.executable, "-c", serve], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        give_up = time.monotonic() + start_timeout
        while not self._answers(port):
            if self._process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise UserError(
                    f"moto's server did not start on {LOOPBACK}:{port} (is the port taken? "
                    "choose another --port, 0 picks a free one)"
                )
            time.sleep(0.1)

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()


def region_or_default(region: str | None) -> str:
    """`region`, else the configured one (AWS_REGION, AWS_DEFAULT_REGION, config), else
    us-east-1."""
    return region or boto3.Session().region_name or DEFAULT_REGION


def local_session(region: str | None = None) -> boto3.Session:
    """A boto3 session for a local endpoint, with moto's test credentials.

    The region is `region`, else the configured one (AWS_REGION, AWS_DEFAULT_REGION, config),
    else us-east-1. Real credentials are never needed (nor sent) for a local endpoint.
    """
    return boto3.Session(
        aws_access_key_id=_LOCAL_ACCESS_KEY,
        aws_secret_access_key=_LOCAL_SECRET_KEY,
        region_name=region_or_default(region),
    )


@dataclass(frozen=True)
class RecordedEndpoint:
    """What `streams local up` writes to `.streams/local.json` while it serves."""

    endpoint_url: str
    region: str
    stack_name: str | None
    template: str | None
    pid: int


def record_endpoint(recorded: RecordedEndpoint, path: Path = STATE_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(recorded), indent=2) + "\n")
    temporary.replace(path)  # readers never see half a file
    return path


@contextlib.contextmanager
def endpoint_recorded(
    endpoint_url: str, stack: DeployedStack, template: str | Path, path: Path = STATE_FILE
) -> Iterator[Path]:
    """While the block runs, the endpoint and its stack are recorded in `path` for the other
    commands (`current_endpoint`); the record is removed when it ends."""
    recorded = RecordedEndpoint(
        endpoint_url=endpoint_url,
        region=stack.region,
        stack_name=stack.stack_name,
        template=str(template),
        pid=os.getpid(),
    )
    record_endpoint(recorded, path)
    try:
        yield path
    finally:
        forget_endpoint(path)


def read_recorded_endpoint(path: Path = STATE_FILE) -> RecordedEndpoint | None:
    """The endpoint `streams local up` serves, or None when none is up (absent or stale file)."""
    try:
        data = json.loads(path.read_text())
        recorded = RecordedEndpoint(
            endpoint_url=str(data["endpoint_url"]),
            region=str(data["region"]),
            stack_name=data.get("stack_name"),
            template=data.get("template"),
            pid=int(data["pid"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} is not a file `streams local up` wrote ({error}); delete it"
        ) from None
    if not _is_loopback_url(recorded.endpoint_url):
        # Commands send it moto's test credentials and everything they read or write: a file
        # in the working directory must not send them anywhere but this machine.
        raise UserError(
            f"{path} names {recorded.endpoint_url!r}, not a loopback address (127.0.0.0/8, ::1, "
            "localhost) as `streams local up` records: not trusted; delete it"
        )
    return recorded if pid_alive(recorded.pid) else None


def _is_loopback_url(url: str) -> bool:
    """True when `url` is http(s) to this machine: 127.0.0.0/8, ::1 or localhost."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return False
    host = parts.hostname  # lower-cased; what follows any `user@`
    if parts.scheme not in ("http", "https") or host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def forget_endpoint(path: Path = STATE_FILE) -> None:
    """Remove the record, if this process wrote it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (FileNotFoundError, ValueError):
        return
