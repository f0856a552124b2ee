"""Keys in parallel, in stream order per key: which record of a batch may start next.

`StreamProcessor(concurrency=N)` handles records of different keys at once and the records of
one key one after another, in stream order (a DynamoDB item's key; a Kinesis partition key).
`KeyedSchedule` decides, holding no thread itself, which record may start:

- a record starts only once the record before it of its key is done;
- the earliest record that may start goes first, so records start in about stream order;
- at most N records are started and not yet behind the *checkpoint*, the earliest record not
  done: whatever happens to that record (it stops the batch, or the time runs out), at most
  N - 1 records after it are done already, and those alone are delivered again;
- once a record stops its key (it still fails after its retries), no record later in the
  stream than it starts; records earlier in the stream go on and finish;
- nothing starts once the invocation's time is up.

Both drivers of the batch core use it: threads for an ordinary handler, one event loop for an
`async def` one.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Hashable, Sequence
from enum import Enum

from streams.records import DynamoDBRecord, StreamRecord

__all__ = ["KeyedSchedule", "State", "order_key"]


def order_key(record: StreamRecord) -> Hashable:
    """What order is kept by: a DynamoDB item's key (as delivered), a Kinesis partition key.

    Read from the record as delivered, without decoding: a record whose key cannot be read is
    handled alone (its own key), and is poison anyway.
    """
    if isinstance(record, DynamoDBRecord):
        keys = record.raw["dynamodb"].get("Keys")
        if isinstance(keys, dict):
            return json.dumps(keys, sort_keys=True)
    else:
        key = record.raw["kinesis"].get("partitionKey")
        if isinstance(key, str):
            return key
    return ("record", id(record))


class State(Enum):
    WAITING = "waiting"  # not started
    RUNNING = "running"
    DONE = "done"  # handled, or parked (durably or not: the batch core checks that)
    STOPPED = "stopped"  # failed transiently after its retries: its key stops here


class KeyedSchedule:
    """Which record of `records` starts next, with at most `concurrency` in the window.

    Not thread-safe: its driver holds a lock (or runs on one event loop) around each call.
    """

    def __init__(self, records: Sequence[StreamRecord], concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
        self.states = [State.WAITING] * len(records)
        self._concurrency = concurrency
        self._chains: dict[Hashable, deque[int]] = {}
        for position, record in enumerate(records):
            self._chains.setdefault(order_key(record), deque()).append(position)
        self._keys = {position: key for key, chain in self._chains.items() for position in chain}
        # The first record of each key: ready to start.
        self._ready = [chain[0] for chain in self._chains.values()]
        heapq.heapify(self._ready)
        self._checkpoint = 0  # the earliest record not done
        self._window = 0  # records started at or after the checkpoint
        self._stop_at = len(records)  # no record after this one starts
        self.running = 0

    @property
    def checkpoint(self) -> int:
        """The earliest record not done (the batch's length once all are)."""
        return self._checkpoint

    def next(self) -> int | None:
        """The record to start now, marked running; None while none may start."""
        if self._window >= self._concurrency or not self._ready:
            return None
        position = self._ready[0]
        if position > self._stop_at:
            return None
        heapq.heappop(self._ready)
        self._chains[self._keys[position]].popleft()
        self.states[position] = State.RUNNING
        self._window += 1
        self.running += 1
        return position

    def finished(self, position: int) -> None:
        """The record is done: its key's next record may start."""
        self.states[position] = State.DONE
        self.running -= 1
        chain = self._chains[self._keys[position]]
        if chain:
            heapq.heappush(self._ready, chain[0])
        while self._checkpoint < len(self.states) and self.states[self._checkpoint] is State.DONE:
            self._checkpoint += 1
            self._window -= 1

    def stopped(self, position: int) -> None:
        """The record stops its key: no record later in the stream starts any more."""
        self.states[position] = State.STOPPED
        self.running -= 1
        self._stop_at = min(self._stop_at, position)

    def halt(self) -> None:
        """Start nothing more (the time is up, or the invocation fails)."""
        self._stop_at = -1

    def done_after(self, position: int) -> int:
        """How many records after `position` are done (they will be delivered again)."""
        return sum(state is State.DONE for state in self.states[position + 1 :])
