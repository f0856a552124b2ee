"""Delivering one batch to the function, with Lambda's error rules (docs/esm.md section 3).

For each part of a batch still to deliver, in order:

1. **Age, per record, before every invocation.** Records older than
   `MaximumRecordAgeInSeconds` are given up with condition `RecordAgeExceeded` (an on-failure
   record without `responseContext`); the fresh records of the same part are still delivered.
   Records retried past the stream's retention have left the stream: they are skipped with a
   warning, and neither counted as dropped nor sent to the destination (AWS's `-1` means "until
   the record leaves the stream").
2. **Invoke.** `NotInvoked` (the function did not run: throttled, no worker) costs no retry:
   the part waits and is tried again.
3. **Read the result** (`responses.interpret`): done, failed from a record on (a partial batch
   response), or failed as a whole.
4. **On failure:**
   - with `BisectBatchOnFunctionError`, a part of two or more records that failed with a
     *function* error is split into halves, delivered in order; splitting uses no retry.
     **Each half keeps its own retry counter, starting from its parent's count** (AWS does not
     document this; it is our choice);
   - otherwise the failed records are retried after a pause (`DEFAULT_RETRY_BACKOFF`) while
     `MaximumRetryAttempts` allows (-1: until the records expire); a partial failure retries
     from the lowest reported record and counts as a retry;
   - otherwise they are given up: `RetryAttemptsExhausted`, `approximateInvokeCount` = the
     number of invocations that carried them (retries + 1 without bisect), and
     `responseContext.functionError` = the function's error (null for a partial failure).

Giving up sends one on-failure record per given-up part and retries the destination until it
takes it (each failed attempt counts in `DestinationDeliveryFailures`): records are skipped
only once their metadata is safe. Records leave the batch done as soon as they are (so a
shard's checkpoint moves past the good half of a bisected batch while the other half retries).
When the mapping stops, the invocation under way finishes, and whatever is not done stays for
the next run.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from botocore.exceptions import BotoCoreError, ClientError

from streams.backoff import Backoff
from streams.mapping.destinations import (
    Destination,
    FailureCondition,
    OnFailureRecord,
    ResponseContext,
    on_failure_record,
)
from streams.mapping.invoke import Event, Invocation, Invoker, InvokeResult, NotInvoked
from streams.mapping.responses import Outcome, interpret
from streams.mapping.settings import MappingSettings
from streams.mapping.shapes import RecordShape
from streams.mapping.state import EVENT_COUNT_METRICS, MappingObserver, MetricName, ShardState
from streams.mapping.windows import Window

__all__ = ["DEFAULT_RETRY_BACKOFF", "Entry", "MappingContext", "ShardDelivery"]

logger = logging.getLogger("streams.mapping")

# Lambda's synchronous invocation payload limit.
PAYLOAD_LIMIT: Final = 6 * 1024 * 1024


class Entry:
    """One record read from a shard, from the read until it is done.

    The record is kept as its JSON text, serialised once when it was read: that text measures
    it against the payload limit and goes into every event that carries it. It is released once
    the entry is done: only its place in the shard is still needed (for the checkpoint), so
    records behind a slow batch do not pile up in memory.
    """

    __slots__ = ("arrival", "done", "sequence_number", "size", "text")

    def __init__(self, text: str, sequence_number: str, arrival: float) -> None:
        self.text: str | None = text
        self.sequence_number = sequence_number
        self.arrival = arrival
        # Bytes of the record in the event's JSON (ASCII: json escapes the rest).
        self.size = len(text)
        self.done = False

    def payload(self) -> str:
        if self.text is None:
            raise RuntimeError(f"record {self.sequence_number} is done: it is not delivered again")
        return self.text


#: The pause before retry `n` (0-based) of a failed batch: `min(2 ** n, 60)` seconds.
#:
#: AWS does not document its pacing. With this one a record failing from its arrival, under
#: `MaximumRecordAgeInSeconds: 60` and unlimited retries, is invoked 6 times and given up with
#: `approximateInvokeCount` 7; AWS's recording of that case shows 8. The same pause applies, by
#: number of tries, to a function that could not be invoked and to a destination that refused a
#: record.
DEFAULT_RETRY_BACKOFF: Final = Backoff(base=1.0, cap=60.0, jitter=False)


@dataclass(frozen=True)
class MappingContext:
    """What every shard of one mapping shares. `pause(seconds)` returns False if stopped."""

    settings: MappingSettings
    shape: RecordShape
    source_arn: str
    function_arn: str
    function_timeout: float
    invoker: Invoker
    destination: Destination | None
    observer: MappingObserver
    clock: Callable[[], float]
    pause: Callable[[float], bool]
    stopping: Callable[[], bool]
    retention_seconds: float
    backoff: Backoff
    _states: dict[str, ShardState] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _states_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def emit(self, shard_id: str, name: MetricName, value: float) -> None:
        if name in EVENT_COUNT_METRICS and (value == 0 or not self.settings.event_count_metrics):
            return
        self.observer.record(shard_id, name, value)

    def shard_state(self, shard_id: str, state: ShardState) -> None:
        """Tell the observer a shard's state once, and only when it moves forward."""
        with self._states_lock:
            current = self._states.get(shard_id)
            if current is not None and _STATE_ORDER[current] >= _STATE_ORDER[state]:
                return
            self._states[shard_id] = state
        self.observer.shard_state(shard_id, state)


_STATE_ORDER: Final[dict[ShardState, int]] = {"open": 0, "closed": 1, "finished": 2}


@dataclass
class _Part:
    """Records of a batch still to deliver, and what they have cost so far."""

    entries: list[Entry]
    retries: int = 0  # counted against MaximumRetryAttempts
    invocations: int = 0  # invocations that carried these records (approximateInvokeCount)
    not_invoked: int = 0  # tries that did not reach the function (they cost no retry)


class ShardDelivery:
    """Delivers batches of one shard. Thread-safe: each lane of the shard calls `deliver`."""

    def __init__(
        self, context: MappingContext, shard_id: str, mark_done: Callable[[Sequence[Entry]], None]
    ) -> None:
        self._context = context
        self._settings = context.settings
        self._shard_id = shard_id
        self._mark_done = mark_done

    def deliver(self, entries: list[Entry], window: Window | None, final: bool) -> bool:
        """Deliver a batch (and close its tumbling window if `final`); False if stopped first."""
        last = entries[-1]
        parts: deque[_Part] = deque([_Part(entries)])
        final_delivered = False
        while parts:
            if self._context.stopping():
                return False
            part = parts.popleft()
            fresh = self._without_expired(part)
            if fresh is None:
                return False
            if not fresh:
                continue
            part.entries = fresh
            is_final = final and fresh[-1] is last
            sent = self._context.clock()
            try:
                result = self._invoke(part, window, is_final)
            except NotInvoked as error:
                logger.warning(
                    "shard %s: function not invoked (%s); trying again", self._shard_id, error
                )
                if not self._context.pause(self._context.backoff.delay(part.not_invoked)):
                    return False
                part.not_invoked += 1
                parts.appendleft(part)
                continue
            part.invocations += 1
            outcome = interpret(
                result,
                [entry.sequence_number for entry in fresh],
                report_batch_item_failures=self._settings.report_batch_item_failures,
                tumbling_window=window is not None,
            )
            self._log(len(fresh), outcome.description, outcome.succeeded, sent, result)
            if window is not None and outcome.state is not None:
                window.pass_on(outcome.state)
            if outcome.succeeded:
                self._mark_done(fresh)
                final_delivered = final_delivered or is_final
                if window is not None and not is_final and window.state_too_large:
                    if not self.close_window(window, terminated_early=True):
                        return False
                    window.pass_on({})
                continue
            if not self._handle_failure(part, outcome, result, parts):
                return False
        if window is not None and final and not final_delivered:
            return self.close_window(window)
        return True

    # --- one invocation ------------------------------------------------------------------

    def _invoke(self, part: _Part, window: Window | None, final: bool) -> InvokeResult:
        context = self._context
        records = [entry.payload() for entry in part.entries]
        if window is None:
            event = Event.of_records(records)
        else:
            event = window.event(
                records, shard_id=self._shard_id, source_arn=context.source_arn, final=final
            )
        # IteratorAge: how old the batch's last record is when the batch is sent (ms).
        age = context.clock() - part.entries[-1].arrival
        context.emit(self._shard_id, "IteratorAge", max(0.0, age) * 1000)
        context.emit(self._shard_id, "InvokedEventCount", len(records))
        return context.invoker(event, context.function_timeout)

    def _log(
        self, count: int, outcome: str, succeeded: bool, sent: float, result: InvokeResult
    ) -> None:
        """The one line per invocation: shard, batch size, outcome, duration; then the observer."""
        duration = self._context.clock() - sent
        logger.info(
            "shard %s: %d records: %s (%.0f ms, request %s)",
            self._shard_id,
            count,
            outcome,
            duration * 1000,
            result.request_id,
        )
        self._context.observer.invoked(
            Invocation(
                self._shard_id,
                count,
                outcome,
                succeeded,
                duration,
                result,
                source_arn=self._context.source_arn,
            )
        )

    # --- failures ------------------------------------------------------------------------

    def _handle_failure(
        self, part: _Part, outcome: Outcome, result: InvokeResult, parts: deque[_Part]
    ) -> bool:
        failed_from = outcome.failed_from or 0
        if failed_from:
            self._mark_done(part.entries[:failed_from])
        failed = part.entries[failed_from:]
        self._context.emit(self._shard_id, "FailedInvokeEventCount", len(failed))
        if self._context.stopping():
            return False
        if (
            self._settings.bisect_batch_on_function_error
            and outcome.function_error is not None
            and len(failed) > 1
        ):
            middle = (len(failed) + 1) // 2
            parts.extendleft(
                [
                    _Part(failed[middle:], part.retries, part.invocations),
                    _Part(failed[:middle], part.retries, part.invocations),
                ]
            )
            return True
        maximum = self._settings.maximum_retry_attempts
        if maximum == -1 or part.retries < maximum:
            if not self._context.pause(self._context.backoff.delay(part.retries)):
                return False
            parts.appendleft(_Part(failed, part.retries + 1, part.invocations))
            return True
        response = ResponseContext(
            function_error=outcome.function_error,
            executed_version=result.executed_version,
            status_code=result.status_code,
        )
        return self._give_up(
            failed,
            "RetryAttemptsExhausted",
            approximate_invoke_count=part.invocations,
            response=response,
            request_id=result.request_id,
        )

    def _without_expired(self, part: _Part) -> list[Entry] | None:
        """The part's records still fresh; the others given up or skipped. None if stopped."""
        now = self._context.clock()
        # A record just read is in the stream; one retried past the retention has left it.
        retention = self._context.retention_seconds if part.invocations else float("inf")
        gone = [entry for entry in part.entries if now - entry.arrival > retention]
        if gone:
            logger.warning(
                "shard %s: %d records (sequence numbers %s to %s) are older than the stream's "
                "retention and have left it: skipped",
                self._shard_id,
                len(gone),
                gone[0].sequence_number,
                gone[-1].sequence_number,
            )
            self._mark_done(gone)
        maximum_age = self._settings.maximum_record_age_in_seconds
        remaining = [entry for entry in part.entries if now - entry.arrival <= retention]
        if maximum_age == -1:
            return remaining
        expired = [entry for entry in remaining if now - entry.arrival > maximum_age]
        if expired and not self._give_up(
            expired,
            "RecordAgeExceeded",
            # The refused attempt counts, as recorded from AWS (1 for a record never invoked).
            approximate_invoke_count=part.invocations + 1,
            response=None,
            request_id=str(uuid.uuid4()),
        ):
            return None
        return [entry for entry in remaining if now - entry.arrival <= maximum_age]

    def _give_up(
        self,
        entries: list[Entry],
        condition: FailureCondition,
        *,
        approximate_invoke_count: int,
        response: ResponseContext | None,
        request_id: str,
    ) -> bool:
        """Skip `entries` once the destination has their metadata. False if stopped before."""
        context = self._context
        count = len(entries)
        destination = context.destination
        if destination is None:
            logger.warning(
                "shard %s: gave up on %d records (sequence numbers %s to %s, %s); "
                "no on-failure destination is set",
                self._shard_id,
                count,
                entries[0].sequence_number,
                entries[-1].sequence_number,
                condition,
            )
        else:
            record = on_failure_record(
                context.shape,
                [entry.payload() for entry in entries],
                shard_id=self._shard_id,
                stream_arn=context.source_arn,
                function_arn=context.function_arn,
                request_id=request_id,
                condition=condition,
                approximate_invoke_count=approximate_invoke_count,
                response=response,
                now=context.clock(),
            )
            if not self._send(destination, record):
                return False
            logger.warning(
                "shard %s: gave up on %d records (sequence numbers %s to %s, %s); "
                "on-failure record sent to %s",
                self._shard_id,
                count,
                entries[0].sequence_number,
                entries[-1].sequence_number,
                condition,
                destination.arn,
            )
            context.emit(self._shard_id, "OnFailureDestinationDeliveredEventCount", count)
        context.emit(self._shard_id, "DroppedEventCount", count)
        self._mark_done(entries)
        return True

    def _send(self, destination: Destination, record: OnFailureRecord) -> bool:
        """Send until the destination takes the record; False if the mapping stopped first."""
        attempt = 0
        while True:
            try:
                destination.send(record)
            except (ClientError, BotoCoreError) as error:
                self._context.emit(self._shard_id, "DestinationDeliveryFailures", record.batch_size)
                logger.warning(
                    "shard %s: on-failure destination %s refused a record (%s); trying again",
                    self._shard_id,
                    destination.arn,
                    error,
                )
                if not self._context.pause(self._context.backoff.delay(attempt)):
                    return False
                attempt += 1
            else:
                return True

    # --- tumbling windows ------------------------------------------------------------------

    def close_window(self, window: Window, *, terminated_early: bool = False) -> bool:
        """The window's final invocation without records, tried until the function takes it.

        AWS: a failed final invocation stops the shard until one succeeds.
        """
        attempt = 0
        while not self._context.stopping():
            event = window.event(
                [],
                shard_id=self._shard_id,
                source_arn=self._context.source_arn,
                final=True,
                terminated_early=terminated_early,
            )
            sent = self._context.clock()
            try:
                result = self._context.invoker(event, self._context.function_timeout)
            except NotInvoked as error:
                logger.warning(
                    "shard %s: function not invoked (%s); trying again", self._shard_id, error
                )
            else:
                described = "final window invocation"
                if result.error is not None:
                    described += f" failed: function error {result.error.error_type}"
                self._log(0, described, result.error is None, sent, result)
                if result.error is None:
                    return True
            if not self._context.pause(self._context.backoff.delay(attempt)):
                return False
            attempt += 1
        return False
