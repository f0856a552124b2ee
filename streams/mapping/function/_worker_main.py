"""The child side of a function worker: Lambda's Python runtime loop, one process per worker.

Started by `streams.mapping.function.pool` *by path* (``python _worker_main.py REQ RESP``), so
that it imports nothing of ours before the function's `CodeUri` is first on `sys.path` (the
function may ship its own copy of `streams`). It uses the standard library only, and runs under
the interpreter chosen for the function's runtime.

Protocol, JSON lines over two dedicated pipes (stdout and stderr stay the function's own, for its
prints and EMF metrics):

- parent -> child, first line: ``{"codeUri", "handler", "marker", "memoryLimitBytes"}``; then one
  line per invocation: ``{"requestId", "deadlineMs" (epoch ms), "event", "invokedFunctionArn"}``.
  End of file: exit.
- child -> parent: ``{"type": "ready", "memoryLimited": bool}`` or ``{"type": "init-error",
  "error": {...}}`` after init; then one line per invocation: ``{"type": "result", "payload"}`` or
  ``{"type": "error", "error": {"errorType", "errorMessage", "stackTrace"}}``.

Before each message the child writes ``marker`` on its own line to stdout and stderr, so the
parent knows it has read every line the function printed during that phase.

A handler that exits the process (``sys.exit``, ``os._exit``, a signal) is not caught: the parent
sees the pipes close and reports a crash, as Lambda reports ``Runtime.ExitError``.

Test-only seam: when the variable ``STREAMS_WORKER_PRELOAD`` names ``module:function``, the
child imports that module once the function's `CodeUri` is on ``sys.path`` and calls the
function with no arguments, before it imports the handler (``streams demo --faults`` installs
its fault injection this way). Lambda has no such thing; a failure there is an init error.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import sys
import time
import traceback
from typing import IO, Any

# Kills an orphaned worker whose parent died mid-invocation (SIGALRM's default action ends the
# process even while a C call holds the GIL); the parent kills a live one at the deadline itself.
_ORPHAN_GRACE_SECONDS = 2.0


class LambdaContext:
    """What Lambda's Python runtime passes as `context` (awslambdaric's attributes and types)."""

    def __init__(self, request_id: str, deadline_ms: int, invoked_function_arn: str) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        # A string, as on Lambda (the runtime copies it from the environment).
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def __repr__(self) -> str:
        return (
            f"LambdaContext([aws_request_id={self.aws_request_id},"
            f"function_name={self.function_name},function_version={self.function_version}])"
        )


class _InitError(Exception):
    def __init__(self, error_type: str, message: str, stack_trace: list[str]) -> None:
        super().__init__(message)
        self.error = _error(error_type, message, stack_trace)


def _error(error_type: str, message: str, stack_trace: list[str]) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message, "stackTrace": stack_trace}


def _stack(error: BaseException) -> list[str]:
    """The traceback of the function's frames (this module's own frame left out), as Lambda."""
    frames = traceback.extract_tb(error.__traceback__)
    own = os.path.abspath(__file__)
    return traceback.format_list([f for f in frames if os.path.abspath(f.filename) != own])


def _load_handler(handler: str) -> Any:
    """awslambdaric's rules and error types for `module.function` handlers."""
    module_name, _, function_name = handler.rpartition(".")
    if not module_name or not function_name:
        raise _InitError(
            "Runtime.MalformedHandlerName", f"Bad handler '{handler}': not module.function", []
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as error:
        raise _InitError(
            "Runtime.ImportModuleError",
            f"Unable to import module '{module_name}': {error}",
            [],
        ) from error
    except SyntaxError as error:
        raise _InitError(
            "Runtime.UserCodeSyntaxError",
            f"Syntax error in module '{module_name}': {error}",
            [],
        ) from error
    except Exception as error:
        raise _InitError(type(error).__name__, str(error), _stack(error)) from error
    function = getattr(module, function_name, None)
    if function is None:
        raise _InitError(
            "Runtime.HandlerNotFound",
            f"Handler '{function_name}' missing on module '{module_name}'",
            [],
        )
    return function


def _preload() -> None:
    """Run STREAMS_WORKER_PRELOAD's `module:function`, if set (see the module docstring)."""
    target = os.environ.get("STREAMS_WORKER_PRELOAD")
    if not target:
        return
    module_name, _, function_name = target.partition(":")
    try:
        getattr(importlib.import_module(module_name), function_name)()
    except Exception as error:
        raise _InitError("Runtime.PreloadError", f"{target}: {error!r}", _stack(error)) from error


def _limit_memory(limit_bytes: int) -> bool:
    """Cap the address space (MemorySize plus an allowance for the interpreter); False if the
    platform does not allow it."""
    try:
        import resource  # not on every platform

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    except (ImportError, ValueError, OSError):
        return False
    return True


def _log_error(error: dict[str, Any]) -> None:
    # Lambda's runtime logs an unhandled error in this form before reporting it.
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error["stackTrace"]:
        lines.append("Traceback (most recent call last):")
        lines.extend(entry.rstrip("\n") for entry in error["stackTrace"])
    sys.stderr.write("\n".join(lines) + "\n")


def _end_phase(marker: bytes) -> None:
    """Everything printed so far reaches the pipes, then the marker after it."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # closed or replaced by the function
                stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # the function closed it: the parent sees end of file
            os.write(fd, marker)


def _send(responses: IO[bytes], line: str) -> None:
    responses.write(line.encode() + b"\n")
    responses.flush()


def _failure(error_type: str, message: str, stack_trace: list[str]) -> str:
    failure = _error(error_type, message, stack_trace)
    _log_error(failure)
    return json.dumps({"type": "error", "error": failure})


def _invoke(handler: Any, request: dict[str, Any]) -> str:
    """One invocation; the response line to send."""
    context = LambdaContext(
        request["requestId"], request["deadlineMs"], request["invokedFunctionArn"]
    )
    remaining = context.get_remaining_time_in_millis() / 1000
    signal.setitimer(signal.ITIMER_REAL, remaining + _ORPHAN_GRACE_SECONDS)
    try:
        result = handler(request["event"], context)
    except Exception as error:
        return _failure(type(error).__name__, str(error), _stack(error))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        return json.dumps({"type": "result", "payload": result})
    except (TypeError, ValueError) as error:
        return _failure("Runtime.MarshalError", f"Unable to marshal response: {error}", [])


def main(argv: list[str]) -> int:
    request_fd, response_fd = int(argv[1]), int(argv[2])
    # Not passed on to processes the function starts: the parent must see end of file on the
    # response pipe when this process ends, whatever it left behind.
    os.set_inheritable(request_fd, False)
    os.set_inheritable(response_fd, False)
    requests = os.fdopen(request_fd, "rb")
    responses = os.fdopen(response_fd, "wb")
    config = json.loads(requests.readline())
    marker = config["marker"].encode() + b"\n"
    memory_limited = _limit_memory(config["memoryLimitBytes"])
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # forwarded line by line, as they are printed
            stream.reconfigure(line_buffering=True)
    sys.path.insert(0, config["codeUri"])
    try:
        _preload()
        handler = _load_handler(config["handler"])
    except _InitError as failure:
        _log_error(failure.error)
        _end_phase(marker)
        _send(responses, json.dumps({"type": "init-error", "error": failure.error}))
        return 1
    _end_phase(marker)
    _send(responses, json.dumps({"type": "ready", "memoryLimited": memory_limited}))
    for line in requests:
        response = _invoke(handler, json.loads(line))
        _end_phase(marker)
        _send(responses, response)
    return 0


if __name__ == "__main__":
    # Run by path: Python put this file's directory first on sys.path. It is not the
    # function's: drop it, so that the function's own modules resolve as on Lambda.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main(sys.argv))
