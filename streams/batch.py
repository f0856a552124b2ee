"""The batch core: one stream batch, record by record, in order.

It cooperates with how Lambda checkpoints a shard (docs/esm.md section 3): Lambda resumes *at* the
lowest reported batch item failure and delivers it and everything after it again. So the core

- goes on after a success;
- parks a poison record (full payload to the dead-letter queue) and goes on;
- retries a transient failure in place, and if it still fails, **stops** and reports exactly
  that record: later records are not touched (no duplicates, per-key order kept);
- parks a record that keeps failing transiently once it is older than `max_record_age`
  (reason `too-old`), instead of holding the shard until the stream drops it;
- acknowledges nothing that is not durable: if the dead-letter queue cannot take a record, the
  response checkpoints at it;
- never starts a record when the invocation's remaining time is below `time_margin`;
- lets a handler that buffers (a `BufferingHandler`, such as `QueueForwarder`) send what it
  holds before the batch's result is made, and acknowledges nothing it could not send.

While a batch runs, `time_left()` tells a handler (or a `RateLimit` it waits on) how long it may
still take before the invocation's margin.

The same result drives Lambda (`BatchResult.lambda_response`) and KCL (`BatchResult.last_done`,
the record to checkpoint *after*).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import random as _random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, cast, runtime_checkable

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from streams.backoff import Backoff, is_throttling
from streams.deadletter import (
    DeadLetter,
    DeadLetterSink,
    ErrorInfo,
    FunctionInfo,
    Reason,
    SqsDeadLetterQueue,
)
from streams.metrics import DEFAULT_NAMESPACE, DEFAULT_SERVICE, FunctionMetricName
from streams.parallel import KeyedSchedule, State
from streams.queues import SQS_BATCH_ENTRIES
from streams.records import RecordDecodeError, StreamRecord, parse_records

__all__ = [
    "BatchResult",
    "BufferingHandler",
    "Halted",
    "Poison",
    "RetryPolicy",
    "StopCause",
    "StreamProcessor",
    "Transient",
    "TransientErrors",
    "time_left",
]

StopCause = Literal["transient", "time", "dead-letter"]
#: The age past which a record that keeps failing transiently is parked (`too-old`), unless
#: `max_record_age` is given or the function's environment sets MAX_RECORD_AGE_VARIABLE.
DEFAULT_MAX_RECORD_AGE = timedelta(hours=6)
MAX_RECORD_AGE_VARIABLE = "STREAMS_MAX_RECORD_AGE_SECONDS"


class _FromEnvironment:
    """`max_record_age`'s default: MAX_RECORD_AGE_VARIABLE, else DEFAULT_MAX_RECORD_AGE."""

    def resolve(self) -> timedelta:
        value = os.environ.get(MAX_RECORD_AGE_VARIABLE)
        if not value:
            return DEFAULT_MAX_RECORD_AGE
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            raise ValueError(
                f"{MAX_RECORD_AGE_VARIABLE}={value!r} is not a number of seconds"
            ) from None


FROM_ENVIRONMENT = _FromEnvironment()
Handler = Callable[[Any], object]


class Poison(Exception):
    """Raise from a handler: this record can never succeed. It is parked and the batch goes on."""


class Transient(Exception):
    """Raise from a handler: this record may succeed if tried again. It is retried in place."""


class Halted(RuntimeError):
    """`halt_after` consecutive failures of one exception type: the invocation fails on purpose."""


@dataclass(frozen=True)
class RetryPolicy:
    """In-place retries of a transient failure.

    Truncated binary exponential backoff with full jitter: before retry `i` (0-based) the core
    sleeps `t_i = rand(0, 1) * min(base_delay * 2 ** i, max_delay)` seconds, at most `retries`
    times, and never when the sleep would end inside the invocation's time margin.
    """

    retries: int = 3
    base_delay: float = 0.2
    max_delay: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy values must not be negative")

    def backoff(self, random: Callable[[], float]) -> Backoff:
        return Backoff(self.base_delay, self.max_delay, random=random)


class TransientErrors:
    """Decides whether an exception is worth retrying in place.

    Transient: `Transient`; a `ClientError` whose code is a throttling code or whose HTTP status
    is 5xx; a connection error or timeout (botocore's, or the built-in ones); any type in `extra`.
    """

    def __init__(self, extra: Sequence[type[BaseException]] = ()) -> None:
        self._types: tuple[type[BaseException], ...] = (
            Transient,
            BotoConnectionError,  # endpoint, proxy, SSL, connect timeouts
            HTTPClientError,  # read timeouts, connections closed mid-response
            ConnectionError,
            TimeoutError,
            *extra,
        )

    def __call__(self, error: BaseException) -> bool:
        if isinstance(error, ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return is_throttling(error) or status >= 500
        return isinstance(error, self._types)


@dataclass(frozen=True)
class BatchResult:
    """What happened to one batch.

    `records[:done]` were handled or durably parked; `records[done:]` must be delivered again.
    """

    records: Sequence[StreamRecord]
    done: int
    stop_cause: StopCause | None = None
    parked: tuple[DeadLetter, ...] = ()
    retries: int = 0
    #: Records after `failed_record` already handled (only with `concurrency` above 1): they
    #: are delivered again with it, at most `concurrency - 1` of them.
    repeats: int = 0

    @property
    def failed_record(self) -> StreamRecord | None:
        """The record to resume *at* (Lambda's checkpoint), None when the batch is done."""
        return self.records[self.done] if self.done < len(self.records) else None

    @property
    def last_done(self) -> StreamRecord | None:
        """The record to checkpoint *after* (KCL's checkpoint), None when none is done."""
        return self.records[self.done - 1] if self.done else None

    def lambda_response(self) -> dict[str, list[dict[str, str]]]:
        """The partial batch response: exactly the first record that must be retried."""
        failed = self.failed_record
        if failed is None:
            return {"batchItemFailures": []}
        return {"batchItemFailures": [{"itemIdentifier": failed.sequence_number}]}


@dataclass
class _HaltCounter:
    """Consecutive failures of one exception type, across invocations of the warm process,
    counted in the order records complete (thread-safe: records of different keys complete
    at once with `concurrency`)."""

    limit: int | None
    error_type: str | None = None
    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def success(self) -> None:
        with self._lock:
            self.error_type, self.count = None, 0

    def failure(self, error_type: str) -> int | None:
        """Count one failure; the count when it reaches the limit, else None."""
        with self._lock:
            if error_type == self.error_type:
                self.count += 1
            else:
                self.error_type, self.count = error_type, 1
            reached = self.limit is not None and self.count >= self.limit
            return self.count if reached else None


class _Deadline:
    """The invocation's remaining time, from the Lambda context (no context: no limit)."""

    def __init__(self, context: object, margin: float) -> None:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        self._remaining: Callable[[], int] | None = remaining if callable(remaining) else None
        self._margin_ms = margin * 1000
        self.timed = self._remaining is not None

    def allows(self, seconds: float = 0.0) -> bool:
        """True if `seconds` more still leave the margin."""
        if self._remaining is None:
            return True
        return self._remaining() - seconds * 1000 >= self._margin_ms

    def left(self) -> float | None:
        """Seconds until the margin (0 once inside it); None without a Lambda context."""
        if self._remaining is None:
            return None
        return max(0.0, (self._remaining() - self._margin_ms) / 1000)


# The running batch's deadline. Set by `StreamProcessor.run` for the whole batch: the threads of
# `concurrency` run in a copy of the caller's context, an async handler's tasks in the event
# loop's, so every record of the batch sees it.
_BATCH_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "streams_batch_deadline", default=None
)


def time_left() -> float | None:
    """Seconds the current record may still take before the invocation's `time_margin`.

    None outside a batch, or when the batch has no Lambda context (no limit is known). Work
    that waits (`RateLimit.acquire`) waits no longer than this: past it, the core would
    checkpoint anyway, and Lambda would time out the invocation soon after.
    """
    deadline = _BATCH_DEADLINE.get()
    return None if deadline is None else deadline.left()


@runtime_checkable
class BufferingHandler(Protocol):
    """A handler that buffers what it produces across the records of a batch (`QueueForwarder`).

    The core calls `flush()` once every record of the batch is handled and before it makes the
    batch's result; records whose output `flush()` could not deliver are not acknowledged: the
    batch checkpoints at the earliest of them (cause `transient`), so Lambda delivers it and
    everything after it again. When the invocation fails instead (`Halted`, a bug), the core
    calls `discard()`: the whole batch comes again.
    """

    def __call__(self, record: Any, /) -> object: ...

    def flush(self) -> Sequence[StreamRecord]:
        """Deliver what is buffered; return the records whose output did not get through."""
        ...

    def discard(self) -> None:
        """Drop what is buffered (the batch failed and will be delivered again)."""
        ...


@dataclass
class _Recovery:
    letter: DeadLetter | None = None
    stop: bool = False
    retries: int = 0


@dataclass
class _Counters:
    processed: int = 0
    retries: int = 0


class _Concurrent:
    """One batch under `concurrency` above 1: the schedule and what the records came to.

    Its driver holds a lock around every call (threads), or runs it on one event loop.
    """

    def __init__(
        self, core: StreamProcessor, records: Sequence[StreamRecord], deadline: _Deadline
    ) -> None:
        self.records = records
        self.schedule = KeyedSchedule(records, core.concurrency)
        self.counters = _Counters()
        self.pending: list[tuple[int, DeadLetter]] = []
        self.parked: list[DeadLetter] = []
        self.stop_cause: StopCause | None = None
        self.repeats = 0
        self._deadline = deadline
        self.flushing = 0  # batches of letters being parked outside the driver's lock
        self._time_up = False
        self._unparked: int | None = None
        self._failure: BaseException | None = None

    @property
    def busy(self) -> bool:
        """Records run, or letters are being parked: the batch is not over."""
        return self.schedule.running > 0 or self.flushing > 0

    def start(self) -> int | None:
        """The record to start now; None while none may (or ever will: time up, failed)."""
        if self._deadline.timed and not self._deadline.allows():
            self._time_up = True
            self.schedule.halt()
        return self.schedule.next()

    def handled(self, position: int, recovery: _Recovery) -> list[tuple[int, DeadLetter]]:
        """Take in a record's outcome; the letters to park now (10 gathered), if any."""
        self.counters.retries += recovery.retries
        if recovery.stop:
            self.schedule.stopped(position)
            return []
        self.schedule.finished(position)
        if recovery.letter is None:
            self.counters.processed += 1
            return []
        self.pending.append((position, recovery.letter))
        if len(self.pending) < SQS_BATCH_ENTRIES:
            return []
        full, self.pending = self.pending, []
        self.flushing += 1
        return full

    def flushed(self, unparked: int | None) -> None:
        """Letters `handled` handed out are parked; `unparked` is the first that was not."""
        self.flushing -= 1
        self._note(unparked)

    def _note(self, unparked: int | None) -> None:
        if unparked is not None:
            self._unparked = unparked if self._unparked is None else min(self._unparked, unparked)

    def raise_failure(self) -> None:
        """Raise what failed the invocation (`Halted`, or a bug), if anything did."""
        if self._failure is not None:
            raise self._failure

    def failed(self, position: int, error: BaseException) -> None:
        self.schedule.stopped(position)
        self.schedule.halt()
        if self._failure is None:
            self._failure = error

    def result(self, unparked: int | None, unsent: int | None) -> BatchResult:
        """The batch's result once nothing runs; `unparked` is the first record of the last
        letters that could not be parked, `unsent` the first whose buffered output a
        `BufferingHandler` could not deliver."""
        self._note(unparked)
        done = self.schedule.checkpoint
        if self._unparked is not None and self._unparked < done:
            done, self.stop_cause = self._unparked, "dead-letter"
        elif done < len(self.records):
            stopped = self.schedule.states[done] is State.STOPPED
            self.stop_cause = "transient" if stopped or not self._time_up else "time"
        if unsent is not None and unsent < done:
            done, self.stop_cause = unsent, "transient"
        self.repeats = self.schedule.done_after(done) if done < len(self.records) else 0
        return BatchResult(
            self.records,
            done,
            self.stop_cause,
            tuple(self.parked),
            self.counters.retries,
            self.repeats,
        )


class StreamProcessor:
    """Runs a per-record handler over Lambda stream batches; see the module docstring.

    ```python
    processor = StreamProcessor(handle)          # dead-letter queue from DEAD_LETTER_QUEUE_URL
    def lambda_handler(event, context):
        return processor.process(event, context)  # {"batchItemFailures": [...]}
    ```
    """

    def __init__(
        self,
        handler: Handler,
        *,
        dead_letters: DeadLetterSink | None = None,
        transient: Sequence[type[BaseException]] = (),
        retry: RetryPolicy | None = None,
        max_record_age: timedelta | _FromEnvironment | None = FROM_ENVIRONMENT,
        time_margin: float = 5.0,
        halt_after: int | None = None,
        concurrency: int = 1,
        logger: Logger | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if halt_after is not None and halt_after < 1:
            raise ValueError("halt_after must be at least 1 (or None for off)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
        self.handler = handler
        self.concurrency = concurrency
        self._buffering = handler if isinstance(handler, BufferingHandler) else None
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__
        )
        self._threads: ThreadPoolExecutor | None = None  # made on first use, kept while warm
        self.dead_letters = (
            dead_letters if dead_letters is not None else SqsDeadLetterQueue.from_environment()
        )
        self.is_transient = TransientErrors(transient)
        self.retry = retry if retry is not None else RetryPolicy()
        self.max_record_age = (
            max_record_age.resolve()
            if isinstance(max_record_age, _FromEnvironment)
            else max_record_age
        )
        self.time_margin = time_margin
        self._halt = _HaltCounter(halt_after)
        service = os.environ.get("POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE)
        self.logger = logger if logger is not None else Logger(service=service)
        self.metrics = (
            metrics
            if metrics is not None
            else Metrics(
                namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE),
                service=service,
            )
        )
        self._clock = clock
        self._sleep = sleep
        self._async_sleep: Callable[[float], Awaitable[None]] = (
            asyncio.sleep if sleep is time.sleep else self._injected_sleep
        )
        self._backoff = self.retry.backoff(random)

    async def _injected_sleep(self, seconds: float) -> None:
        self._sleep(seconds)  # a test's clock: it only advances time

    def process(self, event: object, context: object = None) -> dict[str, list[dict[str, str]]]:
        """Handle one Lambda stream event; returns the partial batch response."""
        return self.run(parse_records(event), context).lambda_response()

    def run(self, records: Sequence[StreamRecord], context: object = None) -> BatchResult:
        """Handle records in order (per key, with `concurrency`); the result says how far the
        batch got and why it stopped."""
        deadline = _Deadline(context, self.time_margin)
        function = FunctionInfo.from_context(context)
        budget = _BATCH_DEADLINE.set(deadline)
        try:
            if self._is_async:
                return asyncio.run(self._run_async(records, deadline, function))
            if self.concurrency > 1:
                return self._run_threads(records, deadline, function)
            return self._run_in_order(records, deadline, function)
        except BaseException:
            if self._buffering is not None:  # the invocation fails: the batch comes again
                self._buffering.discard()
            raise
        finally:
            _BATCH_DEADLINE.reset(budget)

    def _run_in_order(
        self, records: Sequence[StreamRecord], deadline: _Deadline, function: FunctionInfo
    ) -> BatchResult:
        """One record after the other: the hot path of the default `concurrency`."""
        counters = _Counters()
        pending: list[tuple[int, DeadLetter]] = []
        parked: list[DeadLetter] = []
        done = len(records)
        stop_cause: StopCause | None = None
        handler, halt, timed = self.handler, self._halt, deadline.timed
        try:
            for position, record in enumerate(records):
                if timed and not deadline.allows():
                    done, stop_cause = position, "time"
                    break
                try:
                    handler(record)
                except Exception as error:
                    outcome = self._recover(record, error, deadline, function)
                else:  # the hot path: nothing else to do
                    record._release()  # what it decoded goes now, not when the batch ends
                    counters.processed += 1
                    if halt.count:
                        halt.success()
                    continue
                counters.retries += outcome.retries
                if outcome.stop:
                    done, stop_cause = position, "transient"
                    break
                if outcome.letter is None:
                    counters.processed += 1
                    continue
                pending.append((position, outcome.letter))
                if len(pending) == SQS_BATCH_ENTRIES:
                    unparked = self._flush(pending, parked)
                    if unparked is not None:
                        done, stop_cause = unparked, "dead-letter"
                        break
            unparked = self._flush(pending, parked)
            if unparked is not None and unparked < done:
                done, stop_cause = unparked, "dead-letter"
            unsent = self._deliver_buffered(records)
            if unsent is not None and unsent < done:
                done, stop_cause = unsent, "transient"
            return self._finish(
                BatchResult(records, done, stop_cause, tuple(parked), counters.retries)
            )
        finally:
            self._publish(records, counters, parked, stop_cause, 0)

    def _handle(
        self, record: StreamRecord, deadline: _Deadline, function: FunctionInfo
    ) -> _Recovery:
        """One record, its retries included (a driver of `concurrency` above 1)."""
        try:
            self.handler(record)
        except Exception as error:
            return self._recover(record, error, deadline, function)
        record._release()  # what it decoded goes now, not when the batch ends
        if self._halt.count:
            self._halt.success()
        return _Recovery()

    async def _handle_async(
        self, record: StreamRecord, deadline: _Deadline, function: FunctionInfo
    ) -> _Recovery:
        try:
            await cast(Awaitable[object], self.handler(record))
        except Exception as error:
            return await self._recover_async(record, error, deadline, function)
        record._release()  # what it decoded goes now, not when the batch ends
        if self._halt.count:
            self._halt.success()
        return _Recovery()

    def _run_threads(
        self, records: Sequence[StreamRecord], deadline: _Deadline, function: FunctionInfo
    ) -> BatchResult:
        """Keys in parallel on `concurrency` threads (`streams.parallel` says which record
        starts when). Each thread takes the next record itself as soon as one may start."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="streams")
        run = _Concurrent(self, records, deadline)
        changed = threading.Condition()

        def handle(position: int) -> None:
            try:
                recovery = self._handle(records[position], deadline, function)
            except BaseException as error:  # Halted, or a bug: the invocation fails
                with changed:
                    run.failed(position, error)
                    changed.notify_all()
                return
            with changed:
                full = run.handled(position, recovery)
                changed.notify_all()
            if full:
                unparked = self._flush(full, run.parked)
                with changed:
                    run.flushed(unparked)
                    changed.notify_all()

        def work() -> None:
            while True:
                with changed:
                    while (position := run.start()) is None:
                        if not run.busy:
                            return  # nothing runs, nothing may start: the batch is over
                        changed.wait()
                handle(position)

        try:
            # Each thread runs with this invocation's context (a RateLimit's time budget).
            threads = min(self.concurrency, len(records))
            for future in [
                self._threads.submit(contextvars.copy_context().run, work) for _ in range(threads)
            ]:
                future.result()
            run.raise_failure()  # the invocation fails: nothing more is parked
            unparked = self._flush(run.pending, run.parked)
            return self._finish(run.result(unparked, self._deliver_buffered(records)))
        finally:
            self._publish(records, run.counters, run.parked, run.stop_cause, run.repeats)

    async def _run_async(
        self, records: Sequence[StreamRecord], deadline: _Deadline, function: FunctionInfo
    ) -> BatchResult:
        """Keys in parallel on one event loop, at most `concurrency` records in flight."""
        run = _Concurrent(self, records, deadline)
        changed = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def handle(position: int) -> None:
            try:
                recovery = await self._handle_async(records[position], deadline, function)
            except BaseException as error:  # Halted, or a bug: the invocation fails
                run.failed(position, error)
                changed.set()
                return
            full = run.handled(position, recovery)
            changed.set()
            if full:
                run.flushed(await asyncio.to_thread(self._flush, full, run.parked))
                changed.set()

        try:
            while True:
                while (position := run.start()) is not None:
                    task = asyncio.create_task(handle(position))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if not run.busy:
                    break
                await changed.wait()
                changed.clear()
            run.raise_failure()  # the invocation fails: nothing more is parked
            unparked = self._flush(run.pending, run.parked)
            unsent = await asyncio.to_thread(self._deliver_buffered, records)
            return self._finish(run.result(unparked, unsent))
        finally:
            self._publish(records, run.counters, run.parked, run.stop_cause, run.repeats)

    def _recovery(
        self,
        record: StreamRecord,
        error: Exception,
        deadline: _Deadline,
        function: FunctionInfo,
    ) -> Generator[float, Exception | None, _Recovery]:
        """After the handler failed on a record: park it, retry it in place, or stop here.

        The policy alone, for both drivers (`_recover`, `_recover_async`): it yields the delay
        before each retry, and is sent what that retry raised (None: it succeeded).
        """
        tries = 1
        while True:
            # Explicit poison and undecodable content never count towards halt_after.
            poison = isinstance(error, Poison | RecordDecodeError)
            if not poison and not self.is_transient(error):
                if (count := self._halt.failure(type(error).__name__)) is not None:
                    raise Halted(
                        f"{count} consecutive {type(error).__name__} failures "
                        f"(halt_after={self._halt.limit}): failing the invocation instead "
                        "of parking more records"
                    ) from error
                poison = True
            if poison:
                return _Recovery(
                    self._letter(record, "poison", error, tries, function), False, tries - 1
                )
            if tries > self.retry.retries or not deadline.allows(
                delay := self._backoff.delay(tries - 1)
            ):
                if self._too_old(record):
                    return _Recovery(
                        self._letter(record, "too-old", error, tries, function), False, tries - 1
                    )
                return _Recovery(None, True, tries - 1)
            again = yield delay
            tries += 1
            if again is None:
                self._halt.success()
                return _Recovery(None, False, tries - 1)
            error = again

    def _recover(
        self,
        record: StreamRecord,
        error: Exception,
        deadline: _Deadline,
        function: FunctionInfo,
    ) -> _Recovery:
        steps = self._recovery(record, error, deadline, function)
        try:
            delay = next(steps)
            while True:
                self._sleep(delay)
                try:
                    self.handler(record)
                except Exception as again:
                    delay = steps.send(again)
                else:
                    delay = steps.send(None)
        except StopIteration as finished:
            recovery: _Recovery = finished.value
            return recovery

    async def _recover_async(
        self,
        record: StreamRecord,
        error: Exception,
        deadline: _Deadline,
        function: FunctionInfo,
    ) -> _Recovery:
        steps = self._recovery(record, error, deadline, function)
        try:
            delay = next(steps)
            while True:
                await self._async_sleep(delay)
                try:
                    await cast(Awaitable[object], self.handler(record))
                except Exception as again:
                    delay = steps.send(again)
                else:
                    delay = steps.send(None)
        except StopIteration as finished:
            recovery: _Recovery = finished.value
            return recovery

    def _too_old(self, record: StreamRecord) -> bool:
        if self.max_record_age is None:
            return False
        try:
            created = record.record_time
        except RecordDecodeError:
            return False
        if created is None:
            return False
        return self._clock() - created.timestamp() > self.max_record_age.total_seconds()

    def _letter(
        self,
        record: StreamRecord,
        reason: Reason,
        error: BaseException,
        attempts: int,
        function: FunctionInfo,
    ) -> DeadLetter:
        formatted = "".join(traceback.format_exception(error))
        return DeadLetter(
            record=record,
            reason=reason,
            error=ErrorInfo.from_exception(error, formatted),
            attempts=attempts,
            failed_at=datetime.fromtimestamp(self._clock(), tz=UTC),
            function=function,
        )

    def _flush(
        self,
        pending: list[tuple[int, DeadLetter]],
        parked: list[DeadLetter],
    ) -> int | None:
        """Park what is pending; the position of the first record that could not be parked."""
        if not pending:
            return None
        kept = self.dead_letters.park([letter for _, letter in pending])
        # The concurrent drivers gather letters in the order records finish, not in position
        # order: the checkpoint stops at the first position refused, and every letter before it
        # that was kept counts as parked, wherever it stands in `pending`.
        first_unparked = min(
            (
                position
                for (position, _), kept_as in zip(pending, kept, strict=True)
                if kept_as is None
            ),
            default=None,
        )
        for (position, letter), message_id in zip(pending, kept, strict=True):
            self._log_parked(letter, message_id)
            if message_id is not None and (first_unparked is None or position < first_unparked):
                parked.append(letter)
        pending.clear()
        return first_unparked

    def _deliver_buffered(self, records: Sequence[StreamRecord]) -> int | None:
        """Flush a `BufferingHandler`: the position of the first record whose output it could
        not deliver (None: all delivered, or the handler does not buffer)."""
        if self._buffering is None:
            return None
        undelivered = {id(record) for record in self._buffering.flush()}
        if not undelivered:
            return None
        return next(
            (position for position, record in enumerate(records) if id(record) in undelivered),
            None,
        )

    def _finish(self, result: BatchResult) -> BatchResult:
        if result.stop_cause is not None:
            self._log_early_checkpoint(result)
        return result

    def _log_parked(self, letter: DeadLetter, message_id: str | None) -> None:
        """One line per record parked (or not). Ids, keys, reason and error type only: the
        error's message can repeat attribute values, so it stays in the dead-letter message,
        found by its id (`streams dlq show ID`)."""
        fields = {
            "reason": letter.reason,
            "errorType": letter.error.type,
            "attempts": letter.attempts,
            **letter.record.log_fields(),
        }
        if message_id is None:
            self.logger.error(
                "record not parked: the dead-letter queue did not take it, so the batch "
                "checkpoints at it",
                extra=fields,
            )
        else:
            self.logger.error("record parked", extra={**fields, "deadLetterMessageId": message_id})

    def _log_early_checkpoint(self, result: BatchResult) -> None:
        failed = result.failed_record
        self.logger.warning(
            "checkpoint before the end of the batch",
            extra={
                "cause": result.stop_cause,
                "remaining": len(result.records) - result.done,
                "deliveredAgain": result.repeats,
                **(failed.log_fields() if failed is not None else {}),
            },
        )

    def _publish(
        self,
        records: Sequence[StreamRecord],
        counters: _Counters,
        parked: Sequence[DeadLetter],
        stop_cause: StopCause | None,
        repeats: int,
    ) -> None:
        parked_by_reason = Counter(letter.reason for letter in parked)
        metrics = self.metrics

        def add(
            name: FunctionMetricName, value: float, unit: MetricUnit = MetricUnit.Count
        ) -> None:
            metrics.add_metric(name=name, unit=unit, value=value)

        add("RecordsProcessed", counters.processed)
        add("RecordsParked", len(parked))
        add("TransientRetries", counters.retries)
        add("EarlyCheckpoints", int(stop_cause is not None))
        if self.concurrency > 1:
            add("RecordsDeliveredAgain", repeats)
        if records:
            try:
                created = records[-1].record_time
            except RecordDecodeError:
                created = None
            if created is not None:
                age_ms = max(0.0, (self._clock() - created.timestamp()) * 1000)
                add("IteratorAge", age_ms, MetricUnit.Milliseconds)
        metrics.flush_metrics()
        # Parked by reason: one EMF document per reason, with `reason` as an extra dimension.
        provider = metrics.provider
        parked_metric: FunctionMetricName = "RecordsParked"
        for reason, count in parked_by_reason.items():
            with single_metric(
                name=parked_metric,
                unit=MetricUnit.Count,
                value=count,
                namespace=getattr(provider, "namespace", None),
                default_dimensions={
                    "service": str(getattr(provider, "service", None) or DEFAULT_SERVICE),
                    "reason": reason,
                },
            ):
                pass
