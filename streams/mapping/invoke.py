"""The invoker seam: how the mapping runs the function on one event.

An invoker is any callable `invoke(event, deadline_seconds) -> InvokeResult`: the function ran
and returned a JSON value, or it failed (raised, timed out, crashed its process). It raises
`NotInvoked` when the function could not be run at all (throttled, no worker could start):
AWS does not count such errors against `MaximumRetryAttempts` (docs/esm.md section 3).
Implementations: `InProcessInvoker` here (a Python handler in this process, for tests and the
simplest runs) and the worker-process invoker of `streams.mapping.function.pool`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.arn import Arn

__all__ = [
    "Event",
    "FunctionError",
    "InProcessInvoker",
    "Invocation",
    "InvokeResult",
    "Invoker",
    "LambdaContext",
    "NotInvoked",
    "event_json",
]


class Event(Mapping[str, Any]):
    """A Lambda event as JSON text, made once from records serialised once, when they were read.

    An invoker that sends the event on (a worker's pipe) sends `text` as it is; one that reads it
    as a mapping (in-process, a test's recorder) parses it on first use.
    """

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: dict[str, Any] | None = None

    @classmethod
    def of_records(cls, records: Sequence[str], **fields: Any) -> Event:
        """`{"Records": [...], **fields}`, the records given as their JSON texts."""
        text = '{"Records":[' + ",".join(records) + "]"
        if fields:
            text += "," + json.dumps(fields, separators=(",", ":"))[1:]
        else:
            text += "}"
        return cls(text)

    def _parsed(self) -> dict[str, Any]:
        if self._value is None:
            self._value = json.loads(self.text)
        return self._value

    def __getitem__(self, name: str) -> Any:
        return self._parsed()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


def event_json(event: Mapping[str, Any]) -> str:
    """An event's JSON text: an `Event`'s own, made once; any other mapping's, serialised now."""
    return event.text if isinstance(event, Event) else json.dumps(event)


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
            returned = self._handler(json.loads(event_json(event)), context)
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
