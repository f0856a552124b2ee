"""Function workers: the function runs in its own processes, as on Lambda.

One worker per in-flight batch slot. A worker is a child process that imports the function once
(Lambda's init phase) and then serves invocations one at a time, warm: module-level state lives
on between invocations. The child runs `_worker_main.py` and talks to us in JSON lines over two
dedicated pipes; its stdout and stderr are the function's own, forwarded line by line to the
`streams.mapping.function` logger, and the EMF documents among them (Powertools metrics) are
kept on the result.

A `Worker` is the mapping's invoker (`streams.mapping.invoke.Invoker`); its results extend that
seam's types: `WorkerInvokeResult` adds the duration and the EMF metrics, `WorkerFunctionError`
what happened to the process. What costs an invocation, never the mapping:

- the handler raises: Lambda's "Unhandled" error, with the exception's type, message and
  stack trace (kind ``"Unhandled"``);
- the handler runs past `Timeout`: its process group is killed, "Task timed out after N
  seconds" (kind ``"timeout"``);
- the process ends (``sys.exit``, ``os._exit``, a signal): ``Runtime.ExitError`` (kind
  ``"crash"``).

After a timeout or a crash the worker starts a fresh process for its next invocation (a cold
start, as on Lambda). The child runs in its own process group, so Ctrl-C in the terminal reaches
the mapping only, and in-flight invocations can finish.

Settings as on Lambda: `CodeUri` first on `sys.path` and the working directory, `Handler`
(``module.function``), `Runtime` (the matching interpreter where it can import the function's
dependencies, else ours with a warning: `resolve_interpreter`), `Timeout`, `MemorySize` (an
address-space limit, see `MEMORY_ALLOWANCE_MB`), `Environment.Variables` plus Lambda's own
variables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from streams.mapping.invoke import FunctionError, InvokeResult, NotInvoked

__all__ = [
    "INIT_TIMEOUT_SECONDS",
    "MEMORY_ALLOWANCE_MB",
    "REQUIRED_MODULES",
    "EmfMetric",
    "ErrorKind",
    "FunctionSpec",
    "Interpreter",
    "Worker",
    "WorkerFunctionError",
    "WorkerInvokeResult",
    "WorkerPool",
    "resolve_interpreter",
]

logger = logging.getLogger(__name__)
#: The function's own stdout and stderr lines, prefixed with its name.
function_logger = logging.getLogger("streams.mapping.function")

#: Lambda's limit on a function's init phase (importing the handler's module).
INIT_TIMEOUT_SECONDS = 10.0
#: Added to `MemorySize` for the child's address-space limit (`RLIMIT_AS`). An address-space
#: limit counts reserved memory that Lambda's limit (resident memory) does not: the
#: interpreter's mappings, 8 MB stacks and 64 MB malloc arenas per thread. So the child gets
#: this much more; it stops runaway growth with a `MemoryError`, not at Lambda's exact point.
MEMORY_ALLOWANCE_MB = 1024
#: What a function of this project imports that the Lambda runtime or its package provides.
REQUIRED_MODULES = ("boto3", "aws_lambda_powertools")

ErrorKind = Literal["Unhandled", "timeout", "crash"]

_WORKER_MAIN = Path(__file__).with_name("_worker_main.py")
_RUNTIME = re.compile(r"python(\d+)\.(\d+)")
_DRAIN_SECONDS = 1.0  # reading what a dead or dying child still has in its pipes
_EXIT_SECONDS = 2.0  # a child told to stop exits within this, or is killed
_PROBE_SECONDS = 30.0
# The caller's credentials chain: left out when the function is given its own credentials.
_CREDENTIALS_CHAIN = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
# From our environment into the function's: the shell basics and the credentials chain
# (locally the credentials are not the execution role's, as on Lambda, but the caller's).
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", *_CREDENTIALS_CHAIN, "AWS_CA_BUNDLE")
# Lambda refuses a function whose variables set these (CreateFunction's reserved keys).
_RESERVED = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)


def _default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@dataclass(frozen=True)
class FunctionSpec:
    """A function as the template declares it (`CodeUri` resolved against the template)."""

    name: str
    code_uri: Path
    handler: str
    runtime: str = "python3.12"
    timeout: int = 3  # seconds; Lambda's default
    memory_size: int = 128  # MB; Lambda's default
    environment: Mapping[str, str] = field(default_factory=dict)
    region: str = field(default_factory=_default_region)
    account_id: str = "123456789012"
    #: The function's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    #: `AWS_SESSION_TOKEN` if any), as Lambda gives a function its execution role's. Given, they
    #: replace the caller's credentials chain; empty, the caller's passes through.
    credentials: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute: the worker runs in it, and puts it on its import path.
        object.__setattr__(self, "code_uri", Path(self.code_uri).resolve())
        # The ranges and messages of Lambda's CreateFunction.
        if not 1 <= self.timeout <= 900:
            raise ValueError(f"Timeout {self.timeout}: must be 1 to 900 seconds")
        if not 128 <= self.memory_size <= 10240:
            raise ValueError(f"MemorySize {self.memory_size}: must be 128 to 10240 MB")
        module, _, function = self.handler.rpartition(".")
        if not module or not function:
            raise ValueError(f"Handler {self.handler!r}: must be module.function")
        if not _RUNTIME.fullmatch(self.runtime):
            raise ValueError(f"Runtime {self.runtime!r}: only Python runtimes (python3.N) run here")
        if not self.code_uri.is_dir():
            raise ValueError(f"CodeUri {self.code_uri}: not a directory")
        reserved = sorted(_RESERVED.intersection(self.environment))
        if reserved:
            raise ValueError(
                f"Environment.Variables: {', '.join(reserved)} reserved by Lambda: remove them"
            )

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.name}"


@dataclass(frozen=True)
class WorkerFunctionError(FunctionError):
    """A failed invocation in a worker: what Lambda reports, and what happened to the process.

    `kind` is ours, for logs and counters; Lambda reports every one of them as
    ``X-Amz-Function-Error: Unhandled`` (`function_error`, the on-failure record's
    `responseContext.functionError`).
    """

    kind: ErrorKind = "Unhandled"
    stack_trace: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        """The error payload Lambda returns to the invoker."""
        return {
            "errorMessage": self.message,
            "errorType": self.error_type,
            "stackTrace": list(self.stack_trace),
        }


@dataclass(frozen=True)
class EmfMetric:
    """One metric of an embedded-metric-format document the function printed."""

    namespace: str
    name: str
    unit: str | None
    values: tuple[float, ...]
    dimensions: Mapping[str, str]


@dataclass(frozen=True)
class WorkerInvokeResult(InvokeResult):
    """An invocation in a worker, with what the process told besides its payload.

    `duration` is in seconds, from sending the event to the response (init not included).
    `emf` holds the EMF documents the function printed during the invocation (also forwarded
    as log lines); `metrics` flattens them.
    """

    duration: float = 0.0
    emf: tuple[dict[str, Any], ...] = ()

    @property
    def metrics(self) -> tuple[EmfMetric, ...]:
        return tuple(metric for document in self.emf for metric in _emf_metrics(document))


def _is_emf(document: object) -> bool:
    aws = document.get("_aws") if isinstance(document, dict) else None
    return isinstance(aws, dict) and isinstance(aws.get("CloudWatchMetrics"), list)


def _emf_metrics(document: Mapping[str, Any]) -> Iterator[EmfMetric]:
    for directive in document["_aws"]["CloudWatchMetrics"]:
        if not isinstance(directive, dict):
            continue
        names = {
            name
            for dimension_set in directive.get("Dimensions", [])
            if isinstance(dimension_set, list)
            for name in dimension_set
            if isinstance(name, str) and name in document
        }
        dimensions = {name: str(document[name]) for name in sorted(names)}
        for definition in directive.get("Metrics", []):
            name = definition.get("Name") if isinstance(definition, dict) else None
            if not isinstance(name, str) or name not in document:
                continue
            raw = document[name]
            values = raw if isinstance(raw, list) else [raw]
            yield EmfMetric(
                namespace=str(directive.get("Namespace", "")),
                name=name,
                unit=definition.get("Unit"),
                values=tuple(float(v) for v in values if isinstance(v, int | float)),
                dimensions=dimensions,
            )


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs a function's workers."""

    path: str
    version: str  # "3.12"


_PROBE = """
import importlib.util, sys
sys.path.insert(0, sys.argv[1])
print("%d.%d" % sys.version_info[:2])
print(" ".join(m for m in sys.argv[2:] if importlib.util.find_spec(m) is None))
"""


def _base_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in _PASSTHROUGH if name in os.environ}


def _probe(candidate: str, version: str, code_uri: Path) -> str | None:
    """Why `candidate` cannot run the function (None: it can)."""
    try:
        done = subprocess.run(
            [candidate, "-c", _PROBE, str(code_uri), *REQUIRED_MODULES],
            capture_output=True,
            text=True,
            env=_base_environment(),
            timeout=_PROBE_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{candidate} does not run ({error})"
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2:
        return f"{candidate} does not run (exit status {done.returncode})"
    if lines[0] != version:
        return f"{candidate} is Python {lines[0]}"
    if lines[1]:
        missing = ", ".join(lines[1].split())
        return f"{candidate} cannot import {missing} (install them for it, or put them in CodeUri)"
    return None


def _candidates(version: str, search_path: str | None, pyenv_root: Path) -> list[str]:
    found: list[str] = []
    on_path = shutil.which(f"python{version}", path=search_path)
    if on_path is not None:
        found.append(on_path)

    def patch_level(python: Path) -> tuple[int, ...]:
        release = python.parent.parent.name.removeprefix(f"{version}.")
        return tuple(int(part) for part in release.split(".") if part.isdigit())

    installed = pyenv_root.glob(f"versions/{version}.*/bin/python{version}")
    found.extend(str(python) for python in sorted(installed, key=patch_level, reverse=True))
    unique: dict[str, str] = {}
    for candidate in found:
        unique.setdefault(os.path.realpath(candidate), candidate)
    return list(unique.values())


def resolve_interpreter(
    runtime: str,
    code_uri: Path,
    *,
    search_path: str | None = None,
    pyenv_root: Path | None = None,
) -> Interpreter:
    """The Python to run a `runtime` function with.

    Ours when it is the runtime's version. Otherwise the first `pythonX.Y` on `search_path`
    (default: PATH), then in pyenv (`pyenv_root`, default ``$PYENV_ROOT`` or ``~/.pyenv``:
    ``versions/X.Y.*``, newest first) that can import `REQUIRED_MODULES` with `code_uri` first on
    its path. Without one, ours, with a WARNING that says why: putting our venv's
    site-packages on another version's path would load compiled packages built for ours.
    """
    match = _RUNTIME.fullmatch(runtime)
    if match is None:
        raise ValueError(f"Runtime {runtime!r}: only Python runtimes (python3.N) run here")
    version = f"{match[1]}.{match[2]}"
    ours = Interpreter(sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}")
    if ours.version == version:
        return ours
    root = pyenv_root or Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    reasons: list[str] = []
    for candidate in _candidates(version, search_path, root):
        reason = _probe(candidate, version, code_uri)
        if reason is None:
            return Interpreter(candidate, version)
        reasons.append(reason)
    if not reasons:
        reasons.append(f"no python{version} on PATH or in {root}/versions/{version}.*")
    logger.warning(
        "Runtime %s: running the function with Python %s (%s) instead, so it may behave "
        "differently than on Lambda: %s",
        runtime,
        ours.version,
        ours.path,
        "; ".join(reasons),
    )
    return ours


def _exit_description(returncode: int) -> str:
    # Lambda's wording (its runtime API reports the exit as Go prints it).
    if returncode < 0:
        try:
            name = signal.strsignal(-returncode) or f"signal {-returncode}"
        except ValueError:
            name = f"signal {-returncode}"
        return f"Runtime exited with error: signal: {name.lower()}"
    if returncode == 0:
        return "Runtime exited without providing a reason"
    return f"Runtime exited with error: exit status {returncode}"


class _Output:
    """One of the child's output pipes: lines forwarded as they arrive, EMF documents kept.

    A phase (init, one invocation) ends where the child wrote the marker line.
    """

    def __init__(self, fd: int, stream: str, marker: bytes, function_name: str) -> None:
        self.fd = fd
        self.stream = stream
        self.open = True
        self.phase_ended = False
        self.emf: list[dict[str, Any]] = []
        self._marker = marker
        self._function_name = function_name
        self._buffer = b""

    def read(self) -> None:
        data = os.read(self.fd, 65536)
        if not data:
            self.open = False
            if self._buffer:
                self._emit(self._buffer)
                self._buffer = b""
            return
        self._buffer += data
        while (at := self._buffer.find(self._marker)) != -1:
            for line in self._buffer[:at].splitlines():
                self._emit(line)
            self._buffer = self._buffer[at + len(self._marker) :]
            self.phase_ended = True
        complete, newline, rest = self._buffer.rpartition(b"\n")
        if newline:
            for line in complete.splitlines():
                self._emit(line)
            self._buffer = rest

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace")
        if line.startswith("{") and '"_aws"' in line:
            try:
                document = json.loads(line)
            except ValueError:
                document = None
            if _is_emf(document):
                self.emf.append(document)
        function_logger.info(
            "[%s] %s",
            self._function_name,
            line,
            extra={"functionName": self._function_name, "stream": self.stream},
        )


class _Child:
    """One worker process and our ends of its pipes."""

    def __init__(self, spec: FunctionSpec, interpreter: Interpreter) -> None:
        marker = f"\x1estreams-worker-phase-end {secrets.token_hex(16)}"
        log_stream = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        request_read, request_write = os.pipe()
        response_read, response_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [interpreter.path, str(_WORKER_MAIN), str(request_read), str(response_write)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=spec.code_uri,
                env=_function_environment(spec, interpreter, log_stream),
                pass_fds=(request_read, response_write),
                process_group=0,  # its own group: Ctrl-C spares it, a kill takes its children
            )
        except BaseException:
            os.close(request_write)
            os.close(response_read)
            raise
        finally:
            os.close(request_read)
            os.close(response_write)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.requests = request_write
        os.set_blocking(self.requests, False)
        self.responses = response_read
        self.responses_open = True
        self.ready = False
        self.outputs = (
            _Output(self.process.stdout.fileno(), "stdout", marker.encode() + b"\n", spec.name),
            _Output(self.process.stderr.fileno(), "stderr", marker.encode() + b"\n", spec.name),
        )
        self._response_buffer = b""
        self._pending = self._line(
            {
                "codeUri": str(spec.code_uri),
                "handler": spec.handler,
                "marker": marker,
                "memoryLimitBytes": (spec.memory_size + MEMORY_ALLOWANCE_MB) * 1024 * 1024,
            }
        )

    @staticmethod
    def _line(message: Mapping[str, Any]) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def send(self, message: Mapping[str, Any]) -> None:
        """Queue a message; it is written while `exchange` waits (a pipe holds only 64 KiB)."""
        self._pending += self._line(message)

    def exchange(self, deadline: float) -> dict[str, Any] | None:
        """Write what is queued and read until the child's next message and the end of the
        phase on both outputs. None when the child's response pipe closed first (it died) or
        the `deadline` (monotonic) passed."""
        for output in self.outputs:
            output.phase_ended = False
            output.emf.clear()
        message: dict[str, Any] | None = None
        with selectors.DefaultSelector() as selector:
            for output in self.outputs:
                if output.open:
                    selector.register(output.fd, selectors.EVENT_READ, output)
            if self.responses_open:
                selector.register(self.responses, selectors.EVENT_READ)
            if self._pending:
                selector.register(self.requests, selectors.EVENT_WRITE)
            while True:
                if message is not None and all(o.phase_ended or not o.open for o in self.outputs):
                    return message
                if message is None and not self.responses_open:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                for key, _ in selector.select(remaining):
                    if isinstance(key.data, _Output):
                        key.data.read()
                        if not key.data.open:
                            selector.unregister(key.fd)
                    elif key.fd == self.requests:
                        if not self._write():
                            selector.unregister(key.fd)
                    else:
                        message = self._read_response()
                        # One message per phase: after it, only end of file could follow.
                        if message is not None or not self.responses_open:
                            selector.unregister(key.fd)

    def _write(self) -> bool:
        """Write some of what is queued; False when nothing is left (or the child is gone)."""
        try:
            written = os.write(self.requests, self._pending[:65536])
        except BlockingIOError:
            return True
        except BrokenPipeError:  # the child died: its response pipe says so
            self._pending = b""
            return False
        self._pending = self._pending[written:]
        return bool(self._pending)

    def _read_response(self) -> dict[str, Any] | None:
        data = os.read(self.responses, 65536)
        if not data:
            self.responses_open = False
            return None
        self._response_buffer += data
        line, newline, rest = self._response_buffer.partition(b"\n")
        if not newline:
            return None
        self._response_buffer = rest
        message: dict[str, Any] = json.loads(line)
        return message

    def emf(self) -> tuple[dict[str, Any], ...]:
        return tuple(document for output in self.outputs for document in output.emf)

    def kill(self) -> int:
        """Kill the process group, forward what is left in the pipes, and reap: the exit code.

        The group goes too: Lambda tears down the whole sandbox, processes the function
        started included.
        """
        self._close_requests()
        if self.process.returncode is None:  # not reaped: its group id cannot be reused yet
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._drain(_DRAIN_SECONDS)
        returncode = self.process.wait()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        if self.responses != -1:
            os.close(self.responses)
            self.responses = -1
        return returncode

    def stop(self) -> int:
        """End of file on its requests, and the child exits (killed if it has not within a
        grace period): the exit code. Also for a child that is ending by itself: it may still
        be finishing (atexit, flushing) after closing its response pipe."""
        self._close_requests()
        self._drain(_EXIT_SECONDS)  # its outputs close when it exits
        return self.kill()

    def _drain(self, seconds: float) -> None:
        """Forward output until both pipes are closed or `seconds` have passed."""
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as selector:
            for output in self.outputs:
                if output.open:
                    selector.register(output.fd, selectors.EVENT_READ, output)
            while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(remaining):
                    key.data.read()
                    if not key.data.open:
                        selector.unregister(key.fd)

    def _close_requests(self) -> None:
        if self.requests != -1:
            os.close(self.requests)
            self.requests = -1


def _function_environment(
    spec: FunctionSpec, interpreter: Interpreter, log_stream: str
) -> dict[str, str]:
    environment = _base_environment()
    if spec.credentials:
        for name in _CREDENTIALS_CHAIN:
            environment.pop(name, None)
        environment.update(spec.credentials)
    # The local endpoint (and any service-specific one) reaches the function as it reaches us.
    environment.update(
        (name, value) for name, value in os.environ.items() if name.startswith("AWS_ENDPOINT_URL")
    )
    environment.update(spec.environment)
    environment.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": spec.region,
            "AWS_DEFAULT_REGION": spec.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{interpreter.version}",
            "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "_HANDLER": spec.handler,
            "TZ": ":UTC",
        }
    )
    return environment


class Worker:
    """One warm function process, started on first use and replaced after a timeout or crash.

    An `Invoker` (`streams.mapping.invoke`): ``worker(event, deadline_seconds)``. Serves one
    invocation at a time (`WorkerPool` hands each worker to one batch in flight).
    """

    def __init__(self, spec: FunctionSpec, interpreter: Interpreter) -> None:
        self.spec = spec
        self.interpreter = interpreter
        self._child: _Child | None = None
        self._warned_memory = False

    def invoke(
        self, event: Mapping[str, Any], deadline_seconds: float | None = None
    ) -> WorkerInvokeResult:
        """Run the function on `event` for at most `deadline_seconds` (default: its Timeout).

        Raises `NotInvoked` when no process could be started (the invocation costs no retry).
        """
        timeout = float(self.spec.timeout if deadline_seconds is None else deadline_seconds)
        request_id = str(uuid.uuid4())
        child = self._child
        if child is None:
            try:
                child = self._child = _Child(self.spec, self.interpreter)
            except OSError as cause:
                raise NotInvoked(f"cannot start a worker for {self.spec.name}: {cause}") from cause
        if not child.ready:
            init_error = self._init(child, request_id)
            if init_error is not None:
                return WorkerInvokeResult(error=init_error, request_id=request_id, emf=child.emf())
        started = time.monotonic()
        child.send(
            {
                "requestId": request_id,
                "deadlineMs": int((time.time() + timeout) * 1000),
                "event": event,
                "invokedFunctionArn": self.spec.arn,
            }
        )
        message = child.exchange(started + timeout)
        duration = time.monotonic() - started
        if message is None:
            self._child = None
            # Past the deadline even if it died meanwhile (its watchdog, or our kill racing it).
            if child.responses_open or duration >= timeout:
                child.kill()
                error = _timeout(request_id, f"Task timed out after {timeout:.2f} seconds")
                duration = timeout
            else:
                error = _crash(request_id, child.stop())
            return WorkerInvokeResult(
                error=error, request_id=request_id, duration=duration, emf=child.emf()
            )
        if message["type"] == "result":
            return WorkerInvokeResult(
                payload=message["payload"],
                request_id=request_id,
                duration=duration,
                emf=child.emf(),
            )
        return WorkerInvokeResult(
            error=_unhandled(message["error"]),
            request_id=request_id,
            duration=duration,
            emf=child.emf(),
        )

    __call__ = invoke

    def close(self) -> None:
        """Stop the process (it finishes nothing: call between invocations)."""
        if self._child is not None:
            self._child.stop()
            self._child = None

    def _init(self, child: _Child, request_id: str) -> WorkerFunctionError | None:
        """Wait for the function's module to be imported (Lambda's init phase)."""
        message = child.exchange(time.monotonic() + INIT_TIMEOUT_SECONDS)
        if message is not None and message["type"] == "ready":
            child.ready = True
            if not message["memoryLimited"] and not self._warned_memory:
                self._warned_memory = True
                logger.warning(
                    "MemorySize %s MB is not enforced: this platform refused an address-space "
                    "limit",
                    self.spec.memory_size,
                )
            return None
        self._child = None  # the next invocation starts a fresh process, and init again
        if message is not None:  # the module failed to import: the child exits by itself
            child.stop()
            return _unhandled(message["error"])
        if child.responses_open:
            child.kill()
            return _timeout(request_id, f"Init timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds")
        return _crash(request_id, child.stop())


def _unhandled(error: Mapping[str, Any]) -> WorkerFunctionError:
    return WorkerFunctionError(
        error_type=str(error["errorType"]),
        message=str(error["errorMessage"]),
        kind="Unhandled",
        stack_trace=tuple(error["stackTrace"]),
    )


def _timeout(request_id: str, what: str) -> WorkerFunctionError:
    return WorkerFunctionError(
        error_type="Sandbox.Timedout",
        message=f"RequestId: {request_id} Error: {what}",
        kind="timeout",
    )


def _crash(request_id: str, returncode: int) -> WorkerFunctionError:
    return WorkerFunctionError(
        error_type="Runtime.ExitError",
        message=f"RequestId: {request_id} Error: {_exit_description(returncode)}",
        kind="crash",
    )


class WorkerPool:
    """A function's worker processes, as the mappings' invoker: one per batch in flight.

    ```python
    with WorkerPool(spec, interpreter) as invoke:
        result = invoke(event, deadline_seconds)   # from any number of threads
    ```

    A worker is taken for each invocation (the most recently used first: it is warm) and a new
    one is made when all are busy. The engine keeps batches in flight at most shards times
    `ParallelizationFactor`, and shards appear while it runs (a Kinesis split), so the number
    of workers follows that bound instead of a size fixed at start. A worker starts its process
    on its first invocation.
    """

    def __init__(self, spec: FunctionSpec, interpreter: Interpreter) -> None:
        self._spec = spec
        self._interpreter = interpreter
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._all: list[Worker] = []
        self._closed = False

    def __call__(self, event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        with self._lock:
            if self._closed:
                raise NotInvoked("the function's workers are stopped")
            if self._idle:
                worker = self._idle.pop()
            else:
                worker = Worker(self._spec, self._interpreter)
                self._all.append(worker)
        try:
            return worker.invoke(event, deadline_seconds)
        finally:
            with self._lock:
                self._idle.append(worker)

    def close(self) -> None:
        """Stop every process (call once no invocation is under way)."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for worker in workers:
            worker.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
