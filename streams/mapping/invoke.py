"""The invoker seam: how the mapping runs the function on one event.

An invoker is any callable `invoke(event, deadline_seconds) -> InvokeResult`: the function ran
and returned a JSON value, or it failed (raised, timed out, crashed its process). It raises
`NotInvoked` when the function could not be run at all (throttled, no worker could start):
AWS does not count such errors against `MaximumRetryAttempts` (ESM-SPEC section 3).
Implementations: `InProcessInvoker` here (a Python handler in this process, for tests and the
simplest runs) and the worker-process invoker of `streams.mapping.function.pool`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.arn import Arn

__all__ = [
    "FunctionError",
    "InProcessInvoker",
    "Invocation",
    "InvokeResult",
    "Invoker",
    "LambdaContext",
    "NotInvoked",
]


class NotInvoked(Exception):
    """The function was not run (throttled, no worker available): the invocation costs no retry."""


@dataclass(frozen=True)
class FunctionError:
    """A failed invocation, as Lambda reports it.

    `error_type` is the payload's `errorType` (`ZeroDivisionError`, `Sandbox.Timedout`,
    `Runtime.ExitError`); `function_error` is the `X-Amz-Function-Error` header, which the
    on-failure record's `responseContext.functionError` repeats (`Unhandled`).
    """

    error_type: str
    message: str
    function_error: str = "Unhandled"


def _request_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class InvokeResult:
    """One invocation: `payload` is the JSON value returned, unless `error` says it failed."""

    payload: Any = None
    error: FunctionError | None = None
    request_id: str = field(default_factory=_request_id)
    executed_version: str = "$LATEST"
    status_code: int = 200


@dataclass(frozen=True)
class Invocation:
    """One invocation as the mapping saw it, for an observer (the per-invocation log line's
    facts): `outcome` is worded as in that line, `duration` is in seconds on the mapping's clock.
    `shard_id` is the stream's shard, None for a queue; `source_arn` the stream or queue."""

    shard_id: str | None
    records: int
    outcome: str
    succeeded: bool
    duration: float
    result: InvokeResult
    source_arn: str = ""


class Invoker(Protocol):
    def __call__(self, event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        """Run the function on `event`; it may run for `deadline_seconds` (its Timeout)."""
        ...


@dataclass
class LambdaContext:
    """The context a handler receives: the attributes handlers and Powertools read."""

    function_name: str
    aws_request_id: str
    invoked_function_arn: str
    deadline: float  # on `clock`
    clock: Callable[[], float] = time.monotonic
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 128

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"local/{self.aws_request_id}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - self.clock()) * 1000))


class InProcessInvoker:
    """Runs a Python handler `handler(event, context)` in this process.

    The event and the returned value travel as JSON, as they do to and from Lambda: the handler
    gets its own copy of the event, and a value that is not JSON fails the invocation
    (`Runtime.MarshalError`). An exception fails it with the exception's type as `errorType`.
    A handler cannot be stopped in-process, so one that returns after `deadline_seconds` is
    reported as Lambda reports a timeout (`Sandbox.Timedout`), its result discarded.
    """

    def __init__(
        self,
        handler: Callable[[Any, LambdaContext], Any],
        *,
        function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handler = handler
        self._function_arn = function_arn
        self._clock = clock

    def __call__(self, event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        request_id = _request_id()
        started = self._clock()
        context = LambdaContext(
            function_name=Arn.parse(self._function_arn).name,
            aws_request_id=request_id,
            invoked_function_arn=self._function_arn,
            deadline=started + deadline_seconds,
            clock=self._clock,
        )
        try:
            returned = self._handler(json.loads(json.dumps(event)), context)
        except Exception as error:  # the function's failure, reported as Lambda reports it
            return InvokeResult(
                error=FunctionError(type(error).__name__, str(error)), request_id=request_id
            )
        if self._clock() - started > deadline_seconds:
            return InvokeResult(
                error=FunctionError(
                    "Sandbox.Timedout", f"Task timed out after {deadline_seconds:.2f} seconds"
                ),
                request_id=request_id,
            )
        try:
            payload = json.loads(json.dumps(returned))
        except (TypeError, ValueError) as error:
            return InvokeResult(
                error=FunctionError("Runtime.MarshalError", f"Unable to marshal response: {error}"),
                request_id=request_id,
            )
        return InvokeResult(payload=payload, request_id=request_id)
