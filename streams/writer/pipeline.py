"""The writer's state machine: per-key order, batches, retries, and where every write went.

A `Pipeline` holds the unsettled writes by key (`_Slot`), hands batches of up to 25 to its sender
threads, and settles each write as written, replaced by a later write of its key, or failed.

A batch goes out when 25 writes are ready, when someone waits for it (`flush()`, or `put()` on
a full writer), or when its oldest write has been ready for `linger` seconds: a quiet producer's
writes are not kept in memory, exposed to a crash, until the next burst.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from streams.backoff import THROTTLING_CODES, Backoff
from streams.writer.encode import MAX_BATCH, Key, KeySchema, TableWriteError, table_error_message
from streams.writer.pacing import SendingRate

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = ["FailedWrite", "Pipeline", "WriteKind", "WriteReport"]

logger = logging.getLogger("streams.writer")

# Something in the request is refused, not the table: split the batch to find the item.
_REJECTED_ITEM_ERRORS = frozenset(
    {"ValidationException", "ItemCollectionSizeLimitExceededException"}
)
# Passing trouble on AWS's side (besides any 5xx status): send again after a backoff.
_TRANSIENT_ERRORS = frozenset(
    {"InternalServerError", "ServiceUnavailable", "ReplicatedWriteConflictException"}
)


WriteKind = Literal["put", "delete"]


@dataclass(frozen=True)
class FailedWrite:
    """A write DynamoDB did not accept, for good."""

    seq: int
    """The number `put()` or `delete()` returned for it."""
    kind: WriteKind
    item: Mapping[str, Any]
    """The item that was to be put, or the key that was to be deleted (numbers as Decimal)."""
    reason: str


@dataclass(frozen=True)
class WriteReport:
    """Where every write given to a `TableWriter` went.

    Once `flush()` has returned, `submitted == written + replaced + len(failed)`.
    """

    submitted: int = 0
    """Writes given to `put()` and `delete()`."""
    written: int = 0
    """Writes DynamoDB accepted."""
    replaced: int = 0
    """Writes never sent because a later write of the same key took their place first (the table
    ends the same; a table stream sees only the later write)."""
    retried: int = 0
    """Times the writer sent a write again, after `UnprocessedItems`, a throttling error or a
    transient error that botocore gave up on. (botocore's own repeats are in `throttled`.)"""
    unprocessed: int = 0
    """Writes DynamoDB returned in `UnprocessedItems`."""
    throttled: int = 0
    """`BatchWriteItem` attempts DynamoDB refused for capacity (botocore's repeats included)."""
    failed: tuple[FailedWrite, ...] = ()
    """Writes that will not be written, each with its reason."""

    @property
    def pending(self) -> int:
        """Writes neither accepted, replaced nor failed yet."""
        return self.submitted - self.written - self.replaced - len(self.failed)


class _State(enum.Enum):
    READY = "ready"  # in the ready queue, in no request
    DELAYED = "delayed"  # refused; waiting out its backoff
    SENDING = "sending"  # in a request whose answer has not come back


@dataclass(eq=False)
class _Write:
    seq: int
    kind: WriteKind
    request: dict[str, Any]  # the WriteRequest in DynamoDB's JSON
    key: Key
    attempts: int = 0  # times DynamoDB refused it (unprocessed, throttled, transient error)


@dataclass(eq=False)
class _Slot:
    """The unsettled writes of one key: the one being delivered and the later ones behind it.

    When coalescing, at most one waits, and only while the active write is in a request:
    otherwise a later write takes the active one's place.
    """

    active: _Write
    ready_at: float  # when it last became ready: its batch may go `linger` seconds later
    state: _State = _State.READY
    due: float = 0.0
    waiting: deque[_Write] = field(default_factory=deque)


class _ThrottleObserver:
    """Counts the throttled attempts of the calling thread's `BatchWriteItem` call, including
    those botocore's retry mode repeated, and reports each at once (so pacing slows down while
    botocore is still retrying). Registered on botocore's `response-received` event."""

    def __init__(self, on_throttle: Callable[[], None]) -> None:
        self._on_throttle = on_throttle
        self._local = threading.local()

    def start(self) -> None:
        self._local.count = 0

    def stop(self) -> int:
        count: int = self._local.count
        self._local.count = None
        return count

    def __call__(self, *, parsed_response: Mapping[str, Any] | None = None, **_: Any) -> None:
        count: int | None = getattr(self._local, "count", None)
        if count is None or parsed_response is None:
            return  # another caller's request on a shared client, or no answer at all
        if parsed_response.get("Error", {}).get("Code") in THROTTLING_CODES:
            self._local.count = count + 1
            self._on_throttle()


_OBSERVED_EVENT = "response-received.dynamodb.BatchWriteItem"


class Pipeline:
    """The writer's state and its sender threads. Holds no reference to the `TableWriter`, so a
    forgotten writer can be garbage-collected (and warn) while its senders still run.

    An idle sender waits for work until the next moment something falls due (a partial batch's
    linger, a backoff, the deadline). With the real `time.sleep` it waits on a condition, which
    new work cuts short; with an injected sleep (a test's fake clock) one idle sender sleeps on
    it, so that the fake time moves, and the others wait for new work.
    """

    def __init__(
        self,
        table: str,
        client: DynamoDBClient,
        schema: KeySchema,
        *,
        rate: SendingRate,
        backoff: Backoff,
        deadline: float | None,
        senders: int,
        max_pending: int,
        coalesce: bool,
        linger: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.table = table
        self.schema = schema
        self._client = client
        self._rate = rate
        self._backoff = backoff
        self._deadline = deadline
        self._stop_at = None if deadline is None else clock() + deadline
        self._max_pending = max_pending
        self._coalesce = coalesce
        self._linger = linger
        self._clock = clock
        self._sleep = sleep
        self._real_time = sleep is time.sleep
        self._deserializer = TypeDeserializer()

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # senders wait here for something to send
        self._progress = threading.Condition(self._lock)  # put() and flush() wait for settling
        self._slots: dict[Key, _Slot] = {}
        self._ready: deque[Key] = deque()
        self._delayed: list[tuple[float, int, Key]] = []  # heap of (due, tiebreak, key)
        self._tiebreak = itertools.count()
        self._unsettled: set[int] = set()
        self._seq = 0
        self._written = self._replaced = self._retried = self._unprocessed = self._throttled = 0
        self._failed: list[FailedWrite] = []
        self._flushing = 0
        self._blocked = 0
        self._timer_taken = False
        self._stop_reason: str | None = None
        self._error: BaseException | None = None
        self._closing = False

        self._observer = _ThrottleObserver(rate.throttled)
        self._observer_id = f"streams-writer-{id(self)}"
        client.meta.events.register(_OBSERVED_EVENT, self._observer, unique_id=self._observer_id)
        self._threads = [
            threading.Thread(target=self._run_sender, name=f"writer-{table}-{i}", daemon=True)
            for i in range(senders)
        ]
        for thread in self._threads:
            thread.start()

    # -- the caller's side -------------------------------------------------------------------

    def submit(self, kind: WriteKind, request: dict[str, Any], key: Key) -> int:
        with self._lock:
            self._raise_if_unusable()
            while len(self._unsettled) >= self._max_pending and self._stop_reason is None:
                self._blocked += 1
                self._work.notify_all()  # partial batches may go now: the caller is waiting
                try:
                    self._progress.wait()
                finally:
                    self._blocked -= 1
                self._raise_if_unusable()
            now = self._clock()
            self._check_deadline(now)
            self._seq += 1
            write = _Write(self._seq, kind, request, key)
            self._unsettled.add(write.seq)
            slot = self._slots.get(key)
            if self._stop_reason is not None:
                self._finish(write, self._stop_reason)
            elif slot is None:
                self._slots[key] = _Slot(write, ready_at=now)
                self._ready.append(key)
                if len(self._ready) == 1 or len(self._ready) >= MAX_BATCH:
                    # The first ready write starts the linger; 25 make a full batch.
                    self._work.notify()
            elif slot.state is _State.SENDING or not self._coalesce:
                # Per-key order: it waits until the writes before it are accepted or failed.
                if self._coalesce and slot.waiting:
                    self._finish(slot.waiting.pop(), "replaced")
                slot.waiting.append(write)
            else:
                # The queued write was never applied (not sent yet, or refused): the later write
                # of its key takes its place, and its backoff.
                write.attempts = slot.active.attempts
                self._finish(slot.active, "replaced")
                slot.active = write
            return write.seq

    def flush(self) -> None:
        with self._lock:
            self._flushing += 1
            self._work.notify_all()
            try:
                while self._unsettled:
                    self._progress.wait()
            finally:
                self._flushing -= 1
            self._raise_if_failed()

    def completed_through(self) -> int:
        with self._lock:
            self._raise_if_failed()
            return min(self._unsettled) - 1 if self._unsettled else self._seq

    def report(self) -> WriteReport:
        with self._lock:
            return WriteReport(
                submitted=self._seq,
                written=self._written,
                replaced=self._replaced,
                retried=self._retried,
                unprocessed=self._unprocessed,
                throttled=self._throttled,
                failed=tuple(self._failed),
            )

    def shutdown(self) -> None:
        """Stop the senders (nothing is pending) and leave the client as it was."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join()
        self._client.meta.events.unregister(_OBSERVED_EVENT, unique_id=self._observer_id)

    def abort(self, reason: str) -> None:
        """Stop without waiting: what is not accepted is failed with `reason` (writes in flight
        are failed by their sender if DynamoDB does not accept them)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop(reason)
            self._closing = True
            self._work.notify_all()
        self._client.meta.events.unregister(_OBSERVED_EVENT, unique_id=self._observer_id)

    def abandon(self) -> None:
        """The writer was garbage-collected (or the interpreter exits) without `close()`."""
        with self._lock:
            unsettled = len(self._unsettled)
        if unsettled:
            message = (
                f"TableWriter for table {self.table!r} was garbage-collected with {unsettled} "
                f"writes DynamoDB has not accepted; they will not be written. Use "
                f"`with TableWriter(...)`, or call flush() or close() before letting it go."
            )
            logger.error(message)
            warnings.warn(message, ResourceWarning, stacklevel=2)
        self.abort("not sent: the writer was garbage-collected before it sent the write")

    # -- the senders' side -------------------------------------------------------------------

    def _run_sender(self) -> None:
        batch: list[_Write] = []
        try:
            while (taken := self._take()) is not None:
                batch = taken
                self._send(batch)
                batch = []
        except Exception as error:
            # A bug here or in the client: fail loudly (put() and flush() raise it), never hang.
            logger.exception("writer for table %r stopped", self.table)
            with self._lock:
                self._error = self._error or error
                reason = f"not written: the writer failed ({error!r})"
                if self._stop_reason is None:
                    self._stop(reason)
                for write in batch:
                    if write.seq in self._unsettled:
                        self._settle(write, reason)
                self._progress.notify_all()

    def _take(self) -> list[_Write] | None:
        """Wait for something to send; return it as one batch (None: stop)."""
        with self._lock:
            while True:
                if self._closing:
                    return None
                now = self._clock()
                self._check_deadline(now)
                self._release_due(now)
                if self._sendable(now):
                    batch = self._take_batch()
                    if self._sendable(now):
                        self._work.notify()  # more to send: another sender can take it
                    return batch
                self._idle(now)

    def _sendable(self, now: float) -> bool:
        """A batch may go: 25 writes are ready, someone waits for them, or the oldest ready
        write has lingered long enough."""
        ready = self._ready
        if not ready:
            return False
        if len(ready) >= MAX_BATCH or self._flushing or self._blocked:
            return True
        return self._linger_ends() <= now

    def _linger_ends(self) -> float:
        """When the partial batch in the ready queue may go (fewer than 25 are ready)."""
        return min(self._slots[key].ready_at for key in self._ready) + self._linger

    def _idle(self, now: float) -> None:
        """Wait for new work, or until the next write falls due (see the class docstring)."""
        due = [self._delayed[0][0]] if self._delayed else []
        if self._ready:
            due.append(self._linger_ends())
        if due and self._stop_at is not None:
            due.append(self._stop_at)
        if not due:
            self._work.wait()
        elif self._real_time:
            self._work.wait(max(0.0, min(due) - now))
        elif self._timer_taken:
            self._work.wait()
        else:
            self._timer_taken = True
            self._lock.release()
            try:
                self._sleep(max(0.0, min(due) - now))
            finally:
                self._lock.acquire()
                self._timer_taken = False

    def _take_batch(self) -> list[_Write]:
        batch: list[_Write] = []
        while self._ready and len(batch) < MAX_BATCH:
            slot = self._slots[self._ready.popleft()]
            slot.state = _State.SENDING
            if slot.active.attempts:
                self._retried += 1
            batch.append(slot.active)
        return batch

    def _send(self, batch: list[_Write]) -> None:
        wait = self._rate.reserve(len(batch))
        if wait > 0:
            if self._stop_at is not None:
                wait = min(wait, max(0.0, self._stop_at - self._clock()))
            self._sleep(wait)
        with self._lock:
            self._check_deadline(self._clock())
            if self._stop_reason is not None:
                for write in batch:
                    self._settle(write, self._stop_reason)
                self._progress.notify_all()
                return
        self._deliver(batch)

    def _deliver(self, writes: list[_Write]) -> None:
        """One BatchWriteItem call for `writes`, and what follows from its answer."""
        outcome: Mapping[str, Any] | ClientError | BotoCoreError
        self._observer.start()
        try:
            outcome = cast(
                Mapping[str, Any],
                self._client.batch_write_item(
                    RequestItems={self.table: [cast(Any, w.request) for w in writes]}
                ),
            )
        except (ClientError, BotocoreConnectionError, HTTPClientError) as error:
            outcome = error
        finally:
            throttled_attempts = self._observer.stop()

        if isinstance(outcome, Mapping):
            self._on_answer(writes, outcome, throttled_attempts)
        elif isinstance(outcome, ClientError):
            self._on_client_error(writes, outcome, throttled_attempts)
        else:
            logger.warning(
                "BatchWriteItem to table %r failed (%s); sending its %d writes again later",
                self.table,
                outcome,
                len(writes),
            )
            self._refuse(writes, throttled_attempts)

    def _on_answer(
        self, writes: list[_Write], answer: Mapping[str, Any], throttled_attempts: int
    ) -> None:
        unprocessed = answer.get("UnprocessedItems", {}).get(self.table, [])
        refused = {self.schema.key_of_request(request) for request in unprocessed}
        self._rate.accepted(sum(1 for w in writes if w.key not in refused))
        if refused:
            self._rate.throttled()
        with self._lock:
            now = self._clock()
            self._throttled += throttled_attempts
            for write in writes:
                if write.key in refused:
                    self._unprocessed += 1
                    self._settle_refused(write, now)
                else:
                    self._settle(write, "written")
            self._progress.notify_all()
            self._work.notify_all()

    def _on_client_error(
        self, writes: list[_Write], error: ClientError, throttled_attempts: int
    ) -> None:
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in THROTTLING_CODES:
            if throttled_attempts == 0:
                # Refused before any attempt reached botocore's HTTP layer (so unobserved).
                self._rate.throttled()
            self._refuse(writes, max(throttled_attempts, 1))
        elif code in _REJECTED_ITEM_ERRORS and len(writes) > 1:
            # One bad item refuses the whole call: halve the batch until it stands alone.
            logger.info(
                "table %r rejected a batch of %d writes (%s: %s); splitting it to find the item",
                self.table,
                len(writes),
                code,
                message,
            )
            self._count_throttled(throttled_attempts)
            middle = len(writes) // 2
            self._deliver(writes[:middle])
            self._deliver(writes[middle:])
        elif code in _REJECTED_ITEM_ERRORS:
            with self._lock:
                self._throttled += throttled_attempts
                self._settle(writes[0], f"{code}: {message}")
                self._progress.notify_all()
                self._work.notify_all()
        elif code in _TRANSIENT_ERRORS or status >= 500:
            logger.warning(
                "BatchWriteItem to table %r failed (%s: %s); sending its %d writes again later",
                self.table,
                code,
                message,
                len(writes),
            )
            self._refuse(writes, throttled_attempts)
        else:
            where = f"{self._client.meta.endpoint_url} (region {self._client.meta.region_name})"
            table_error = TableWriteError(table_error_message(self.table, where, error))
            logger.error("%s", table_error)
            with self._lock:
                self._throttled += throttled_attempts
                self._error = self._error or table_error
                reason = f"not written: {table_error}"
                if self._stop_reason is None:
                    self._stop(reason)
                for write in writes:
                    self._settle(write, reason)
                self._progress.notify_all()

    def _count_throttled(self, attempts: int) -> None:
        with self._lock:
            self._throttled += attempts

    def _refuse(self, writes: list[_Write], throttled_attempts: int) -> None:
        """Nothing in the call was written: every write is sent again after its backoff."""
        with self._lock:
            now = self._clock()
            self._throttled += throttled_attempts
            for write in writes:
                self._settle_refused(write, now)
            self._progress.notify_all()
            self._work.notify_all()

    # -- bookkeeping, with the lock held -----------------------------------------------------

    def _settle(self, write: _Write, outcome: str) -> None:
        """`write` is done ("written", or failed for the reason `outcome`): the next write of
        its key may go."""
        self._finish(write, outcome)
        self._advance(write.key)

    def _settle_refused(self, write: _Write, now: float) -> None:
        if self._stop_reason is not None:
            self._settle(write, self._stop_reason)
            return
        slot = self._slots[write.key]
        write.attempts += 1
        if self._coalesce and slot.waiting:
            # The refused write was never applied: the later write of its key goes instead.
            self._finish(write, "replaced")
            slot.active = slot.waiting.pop()
            slot.active.attempts = write.attempts
        slot.state = _State.DELAYED
        slot.due = now + self._backoff.delay(slot.active.attempts - 1)
        heapq.heappush(self._delayed, (slot.due, next(self._tiebreak), write.key))

    def _advance(self, key: Key) -> None:
        """The slot's active write is settled: the first waiting write, if any, is next."""
        slot = self._slots[key]
        if not slot.waiting:
            del self._slots[key]
            return
        slot.active = slot.waiting.popleft()
        slot.state = _State.READY
        slot.ready_at = self._clock()
        self._ready.append(key)

    def _finish(self, write: _Write, outcome: str) -> None:
        """Account for a write that is settled: "written", "replaced", or failed for `outcome`."""
        self._unsettled.discard(write.seq)
        if outcome == "written":
            self._written += 1
        elif outcome == "replaced":
            self._replaced += 1
        else:
            self._failed.append(FailedWrite(write.seq, write.kind, self._plain(write), outcome))

    def _plain(self, write: _Write) -> dict[str, Any]:
        if write.kind == "put":
            attributes = write.request["PutRequest"]["Item"]
        else:
            attributes = write.request["DeleteRequest"]["Key"]
        return {name: self._deserializer.deserialize(v) for name, v in attributes.items()}

    def _release_due(self, now: float) -> None:
        """Move writes whose backoff has ended to the front of the ready queue."""
        while self._delayed:
            due, _, key = self._delayed[0]
            slot = self._slots.get(key)
            stale = slot is None or slot.state is not _State.DELAYED or slot.due != due
            if not stale and due > now:
                return
            heapq.heappop(self._delayed)
            if not stale and slot is not None:
                slot.state = _State.READY
                slot.ready_at = due
                self._ready.appendleft(key)

    def _check_deadline(self, now: float) -> None:
        if self._stop_reason is None and self._stop_at is not None and now >= self._stop_at:
            self._stop(f"deadline: not accepted within {self._deadline:g} s of the writer's start")

    def _stop(self, reason: str) -> None:
        """From now on nothing more is sent: every write not in flight fails with `reason`."""
        self._stop_reason = reason
        for key, slot in list(self._slots.items()):
            for write in slot.waiting:
                self._finish(write, reason)
            slot.waiting.clear()
            if slot.state is not _State.SENDING:
                self._finish(slot.active, reason)
                del self._slots[key]
        self._ready.clear()
        self._delayed.clear()
        self._progress.notify_all()
        self._work.notify_all()

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, TableWriteError):
            raise TableWriteError(str(self._error))
        if self._error is not None:
            raise RuntimeError(f"the writer for table {self.table!r} failed") from self._error

    def _raise_if_unusable(self) -> None:
        self._raise_if_failed()
        if self._closing:
            raise RuntimeError(f"the writer for table {self.table!r} is closed")
