"""One worker process and the pipes to it: the protocol `_worker_main.py` speaks.

The child imports the function once (Lambda's init phase), then serves invocations one at a
time. Requests and responses travel as JSON lines over two dedicated pipes; its stdout and stderr
are the function's own, forwarded line by line to the `streams.mapping.function` logger, and the
EMF documents among them kept for the invocation's result. A phase (init, one invocation) ends
where the child wrote a marker line on both outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import selectors
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.mapping.function.emf import is_emf
from streams.mapping.function.interpreter import Interpreter
from streams.mapping.function.spec import FunctionSpec, function_environment

__all__ = ["INIT_TIMEOUT_SECONDS", "MEMORY_ALLOWANCE_MB", "Child", "exit_description"]

#: The function's own stdout and stderr lines, prefixed with its name.
function_logger = logging.getLogger("streams.mapping.function")

#: Lambda's limit on a function's init phase (importing the handler's module).
INIT_TIMEOUT_SECONDS = 10.0


#: Added to `MemorySize` for the child's address-space limit (`RLIMIT_AS`). An address-space
#: limit counts reserved memory that Lambda's limit (resident memory) does not: the
#: interpreter's mappings, 8 MB stacks and 64 MB malloc arenas per thread. So the child gets
#: this much more; it stops runaway growth with a `MemoryError`, not at Lambda's exact point.
MEMORY_ALLOWANCE_MB = 1024

_WORKER_MAIN = Path(__file__).with_name("_worker_main.py")

_DRAIN_SECONDS = 1.0  # reading what a dead or dying child still has in its pipes

_EXIT_SECONDS = 2.0  # a child told to stop exits within this, or is killed


def exit_description(returncode: int) -> str:
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
            if is_emf(document):
                self.emf.append(document)
        function_logger.info(
            "[%s] %s",
            self._function_name,
            line,
            extra={"functionName": self._function_name, "stream": self.stream},
        )


class Child:
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
                env=function_environment(spec, interpreter.version, log_stream),
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

    def send(self, message: Mapping[str, Any], *, event: str) -> None:
        """Queue an invocation: `message` with the event's JSON text (`event`, sent as it is)
        under ``event``. It is written while `exchange` waits (a pipe holds only 64 KiB)."""
        head = json.dumps(message, separators=(",", ":"))
        self._pending += f'{head[:-1]},"event":{event}}}\n'.encode()

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
