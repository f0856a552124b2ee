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

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streams.mapping.function.child import INIT_TIMEOUT_SECONDS, Child, exit_description
from streams.mapping.function.emf import EmfMetric, emf_metrics
from streams.mapping.function.interpreter import Interpreter
from streams.mapping.function.spec import FunctionSpec
from streams.mapping.invoke import FunctionError, InvokeResult, NotInvoked, event_json

__all__ = ["ErrorKind", "Worker", "WorkerFunctionError", "WorkerInvokeResult", "WorkerPool"]

logger = logging.getLogger(__name__)

ErrorKind = Literal["Unhandled", "timeout", "crash"]


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
        return tuple(metric for document in self.emf for metric in emf_metrics(document))


class Worker:
    """One warm function process, started on first use and replaced after a timeout or crash.

    An `Invoker` (`streams.mapping.invoke`): ``worker(event, deadline_seconds)``. Serves one
    invocation at a time (`WorkerPool` hands each worker to one batch in flight).
    """

    def __init__(self, spec: FunctionSpec, interpreter: Interpreter) -> None:
        self.spec = spec
        self.interpreter = interpreter
        self._child: Child | None = None
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
                child = self._child = Child(self.spec, self.interpreter)
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
                "invokedFunctionArn": self.spec.arn,
            },
            event=event_json(event),
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

    def _init(self, child: Child, request_id: str) -> WorkerFunctionError | None:
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
        message=f"RequestId: {request_id} Error: {exit_description(returncode)}",
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
