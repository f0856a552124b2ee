"""One shard under the mapping: polling, batching, per-key lanes and checkpoints (section 2).

A `ShardWorker` runs one poller thread and `ParallelizationFactor` lane threads.

- **Polling.** The poller reads at most `BatchSize` records per call, and only while the
  records held for the shard (read and not yet done) stay under twice what the lanes can have
  in flight (`2 * BatchSize * ParallelizationFactor` records, `2 * 6 MB * factor` of payload):
  memory does not grow with the backlog. A read that returned as many records as asked for is
  followed at once; otherwise the poller waits the source's pace (DynamoDB 4 reads a second,
  Kinesis 1) before reading again. Records matching no filter are done at once: never
  delivered, never retried, counted as filtered out.
- **Lanes.** Each record goes to the lane of its key (DynamoDB: the item's `Keys`; Kinesis:
  the partition key), so records of one key stay in order in one lane, and a lane has one
  batch in flight at a time: at most `ParallelizationFactor` batches per shard. With a factor
  of 1 there is one lane and the shard is strictly in order.
- **Batches.** A lane sends its pending records when it has `BatchSize` of them, when their
  event would pass 6 MB, when its batching window (`MaximumBatchingWindowInSeconds`, opened
  when its previous invocation ended) has passed, or when the shard has ended. With tumbling
  windows a batch never spans two windows.
- **Checkpoints.** The shard's checkpoint is the last record of the longest done prefix of what
  was read (records of different lanes finish out of order); it is written whenever it moves,
  and once more, marked finished, when a closed shard has been read to its end and all done.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.mapping.delivery import PAYLOAD_LIMIT, Entry, MappingContext, ShardDelivery
from streams.mapping.filters import RecordFilter
from streams.mapping.state import CheckpointStore
from streams.mapping.windows import Window, window_start
from streams.sources.base import ShardReader

__all__ = ["POLL_INTERVAL", "ShardWorker"]

logger = logging.getLogger("streams.mapping")

# Seconds between polls of a caught-up shard (docs/esm.md section 2).
POLL_INTERVAL = {"aws:dynamodb": 0.25, "aws:kinesis": 1.0}
# Bytes of an event around its records, and its tumbling-window fields without the state.
_EVENT_OVERHEAD = 1024
# DynamoDB rounds creation times down to the second: a read this long after a tumbling
# window's end has seen every record of the window.
_ARRIVAL_SLACK = 1.0


@dataclass
class _Lane:
    """Records of some keys of the shard, delivered one batch at a time, in order."""

    index: int
    batching_window_opened: float
    pending: deque[Entry] = field(default_factory=deque)
    busy: bool = False
    window: Window | None = None  # the open tumbling window


@dataclass(frozen=True)
class _Job:
    entries: list[Entry]
    window: Window | None
    final: bool  # the batch ends its tumbling window


class ShardWorker:
    """Reads one shard and delivers its records (see the module docstring).

    `start_sequence_number` is the checkpoint the shard resumed from, if any. The worker stops
    when the mapping stops (`context.stopping()`, then `wake()`), or when the shard has ended
    and everything read is done (`finished`). An error in any of its threads stops the worker;
    `error` holds it.
    """

    def __init__(
        self,
        shard_id: str,
        reader: ShardReader,
        *,
        context: MappingContext,
        record_filter: RecordFilter,
        checkpoints: CheckpointStore,
        start_sequence_number: str | None,
    ) -> None:
        self.shard_id = shard_id
        self._reader = reader
        self._context = context
        self._settings = context.settings
        self._filter = record_filter
        self._checkpoints = checkpoints
        self._cond = threading.Condition()
        self._checkpoint_lock = threading.Lock()
        self._delivery = ShardDelivery(context, shard_id, self._mark_done)
        factor = self._settings.parallelization_factor
        now = context.clock()
        self._lanes = [_Lane(index, batching_window_opened=now) for index in range(factor)]
        self._max_held = 2 * self._settings.batch_size * factor
        self._max_held_bytes = 2 * PAYLOAD_LIMIT * factor
        # Everything read and not yet checkpointed, in shard order.
        self._held: deque[Entry] = deque()
        self._held_bytes = 0
        self._done_count = 0  # entries that left `_held` (the done prefix), ever
        self._done_through = start_sequence_number
        self._checkpointed_count = 0
        self._ended = False
        self._caught_up = False
        self._read_through = float("-inf")  # the latest arrival time read
        self._tip_reached_at = float("-inf")  # when a read last came back short: at the tip
        self._last_activity = now
        self._threads: list[threading.Thread] = []
        self.finished = False
        self.error: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [
            threading.Thread(
                target=self._guard, args=(self._poll,), name=f"poll-{self.shard_id}", daemon=True
            ),
            *(
                threading.Thread(
                    target=self._guard,
                    args=(self._lane_loop, lane),
                    name=f"lane-{self.shard_id}-{lane.index}",
                    daemon=True,
                )
                for lane in self._lanes
            ),
        ]
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Make waiting threads look at the mapping's state again (it is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def idle_since(self) -> float | None:
        """Since when the shard has had nothing to do (caught up, all done), or None if busy."""
        with self._cond:
            if self.finished:
                return self._last_activity
            busy = (
                not (self._caught_up or self._ended)
                or any(lane.busy or lane.pending or lane.window for lane in self._lanes)
                or any(not entry.done for entry in self._held)
            )
            return None if busy else self._last_activity

    def _guard(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except BaseException as error:  # reported to the mapping, which stops and re-raises it
            logger.exception("shard %s: stopped by an error", self.shard_id)
            with self._cond:
                if self.error is None:
                    self.error = error
                self._cond.notify_all()

    def _stopped(self) -> bool:
        return self.error is not None or self._context.stopping()

    # --- polling -----------------------------------------------------------------------------

    def _poll(self) -> None:
        interval = POLL_INTERVAL[self._settings.event_source]
        while not self._stopped():
            with self._cond:
                room = self._max_held - len(self._held)
                if room <= 0 or self._held_bytes >= self._max_held_bytes:
                    self._cond.wait()
                    continue
            limit = min(room, self._settings.batch_size)
            started = self._context.clock()
            result = self._reader.read(limit)
            if result.throttled:
                continue  # the reader has waited its backoff already
            if result.expired is not None:
                # The checkpoint (or the start) is older than the stream's retention: the reader
                # went on at the oldest record still there. Said loudly and counted, never silent.
                logger.warning(
                    "shard %s: records %s have left the stream before they were read: lost",
                    self.shard_id,
                    result.expired.describe(),
                )
                self._context.emit(self.shard_id, "ExpiredRanges", 1)
            short = len(result.records) < limit
            self._accept(
                result.records, at_tip=started if short else None, ended=result.shard_ended
            )
            if result.shard_ended:
                self._context.shard_state(self.shard_id, "closed")
                self._finish()
                return
            if short and not self._context.pause(interval):
                return
            with self._cond:
                # Lanes waiting for a batching or tumbling window look at the clock again.
                self._cond.notify_all()

    def _accept(self, records: list[dict[str, Any]], *, at_tip: float | None, ended: bool) -> None:
        """Take in one read: its records, whether it reached the stream's tip (a read that
        came back short, started at `at_tip`), and whether the shard ended."""
        shape = self._context.shape
        factor = self._settings.parallelization_factor
        accepted: list[tuple[Entry, int | None]] = []
        filtered = 0
        for record in records:
            entry = Entry(
                json.dumps(record), shape.sequence_number(record), shape.arrival_time(record)
            )
            if self._filter and not self._filter.passes(record):
                entry.done = True
                entry.text = None
                filtered += 1
                accepted.append((entry, None))
            elif factor == 1:
                accepted.append((entry, 0))
            else:
                key = shape.order_key(record).encode()
                accepted.append((entry, zlib.crc32(key) % factor))
        with self._cond:
            for entry, lane_index in accepted:
                self._held.append(entry)
                if lane_index is not None:
                    lane = self._lanes[lane_index]
                    lane.pending.append(entry)
                    self._held_bytes += entry.size
                self._read_through = max(self._read_through, entry.arrival)
            if records:
                self._last_activity = self._context.clock()
            self._caught_up = not records
            if at_tip is not None:
                self._tip_reached_at = at_tip
            self._ended = ended
            advanced = self._advance()
            self._cond.notify_all()
        self._context.emit(self.shard_id, "PolledEventCount", len(records))
        self._context.emit(self.shard_id, "FilteredOutEventCount", filtered)
        if advanced:
            self._write_checkpoint()

    def _finish(self) -> None:
        """After the shard's end: wait until all is done, then checkpoint it as finished."""
        with self._cond:
            while not self._stopped() and (
                self._held or any(lane.busy or lane.window for lane in self._lanes)
            ):
                self._cond.wait()
            if self._stopped():
                return
        with self._checkpoint_lock:
            self._checkpoints.put(self.shard_id, self._done_through, True)
        logger.info("shard %s: finished", self.shard_id)
        self._context.shard_state(self.shard_id, "finished")
        with self._cond:
            self.finished = True
            self._last_activity = self._context.clock()
            self._cond.notify_all()

    # --- lanes -------------------------------------------------------------------------------

    def _lane_loop(self, lane: _Lane) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped():
                        return
                    job = self._next_job(lane)
                    if job is not None:
                        lane.busy = True
                        break
                    if self._ended and not lane.pending and lane.window is None:
                        return
                    self._cond.wait()
            try:
                self._run(lane, job)
            finally:
                with self._cond:
                    lane.busy = False
                    lane.batching_window_opened = self._context.clock()
                    self._last_activity = lane.batching_window_opened
                    self._cond.notify_all()

    def _run(self, lane: _Lane, job: _Job) -> None:
        if job.window is not None and not job.entries:
            closed = self._delivery.close_window(job.window)
        else:
            closed = self._delivery.deliver(job.entries, job.window, job.final)
        if closed and (job.final or not job.entries):
            with self._cond:
                lane.window = None

    def _next_job(self, lane: _Lane) -> _Job | None:
        """The lane's next batch if it should be sent now (called holding the lock)."""
        now = self._context.clock()
        seconds = self._settings.tumbling_window_in_seconds
        if not lane.pending:
            if lane.window is not None and self._window_complete(lane.window):
                return _Job([], lane.window, final=True)
            return None
        window: Window | None = None
        start: float | None = None
        if seconds:
            start = window_start(lane.pending[0].arrival, seconds)
            if lane.window is not None and lane.window.start != start:
                # A record of a later window: the open one is over.
                return _Job([], lane.window, final=True)
            window = lane.window or Window(start=start, seconds=seconds)
        taken, full = self._take_count(lane, window, start)
        after = lane.pending[taken] if taken < len(lane.pending) else None
        final = False
        if window is not None:
            # The batch ends its window if no record of the window can follow it.
            final = (after is None or after.arrival >= window.end) and self._window_complete(window)
        ready = (
            full
            or final
            or self._ended
            or now
            >= lane.batching_window_opened + self._settings.maximum_batching_window_in_seconds
        )
        if not ready:
            return None
        entries = [lane.pending.popleft() for _ in range(taken)]
        lane.window = window
        return _Job(entries, window, final)

    def _window_complete(self, window: Window) -> bool:
        """Whether every record of `window` has been read (holding the lock).

        Records of a shard arrive in order, so the window is complete once a later record was
        read, once a read reached the stream's tip well after the window's end, or once the
        shard has ended.
        """
        return (
            self._ended
            or self._read_through >= window.end
            or self._tip_reached_at >= window.end + _ARRIVAL_SLACK
        )

    def _take_count(
        self, lane: _Lane, window: Window | None, start: float | None
    ) -> tuple[int, bool]:
        """How many pending records the next batch takes, and whether that batch is full.

        Full: `BatchSize` records, or the next record would take the event past 6 MB.
        """
        budget = PAYLOAD_LIMIT - _EVENT_OVERHEAD
        if window is not None:
            budget -= window.state_size
        batch_size = self._settings.batch_size
        seconds = self._settings.tumbling_window_in_seconds
        taken = 0
        size = 0
        for entry in lane.pending:
            if taken == batch_size:
                return taken, True
            if start is not None and window_start(entry.arrival, seconds) != start:
                return taken, False
            size += entry.size + 2  # the separator between records
            if taken and size > budget:
                return taken, True
            taken += 1
        return taken, taken == batch_size

    # --- done records and checkpoints --------------------------------------------------------

    def _mark_done(self, entries: Sequence[Entry]) -> None:
        with self._cond:
            for entry in entries:
                entry.done = True
                entry.text = None
                self._held_bytes -= entry.size
            advanced = self._advance()
            self._cond.notify_all()
        if advanced:
            self._write_checkpoint()

    def _advance(self) -> bool:
        """Drop the done prefix of what is held (holding the lock); True if it moved."""
        moved = False
        while self._held and self._held[0].done:
            entry = self._held.popleft()
            self._done_through = entry.sequence_number
            self._done_count += 1
            moved = True
        return moved

    def _write_checkpoint(self) -> None:
        # Lanes finish out of order: the lock and the count keep checkpoints moving forward.
        with self._checkpoint_lock:
            with self._cond:
                count, sequence_number = self._done_count, self._done_through
            if count > self._checkpointed_count and sequence_number is not None:
                self._checkpoints.put(self.shard_id, sequence_number, False)
                self._checkpointed_count = count
