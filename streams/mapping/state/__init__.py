"""The mapping's state, through two seams: checkpoints, and an observer of what happens.

`CheckpointStore` is what the engine needs to resume a shard: `streams.mapping.state.table`
keeps checkpoints in a DynamoDB table (under the lease of `streams.mapping.state.lease`),
`MemoryCheckpointStore` in memory.

`MappingObserver` is told, as it happens, every per-shard figure of docs/esm.md section 8
(`record`), each shard's state (`shard_state`: open, closed, finished, only ever forward) and
each invocation's outcome (`invoked`). The state table keeps all three for the monitor;
`MetricCounters` adds the figures up in memory; `Observers` tells several.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from streams.mapping.invoke import Invocation
from streams.metrics import EVENT_COUNT_METRICS, EVENT_COUNT_NAMES, MetricName

__all__ = [
    "EVENT_COUNT_METRICS",
    "EVENT_COUNT_NAMES",
    "CheckpointStore",
    "MappingObserver",
    "MemoryCheckpointStore",
    "MetricCounters",
    "MetricName",
    "Observers",
    "OnInvocation",
    "ShardState",
]


class CheckpointStore(Protocol):
    """Where each shard resumes.

    A checkpoint is the sequence number of the last record fully done (delivered, filtered out,
    or given up on): the shard resumes *after* it. `shard_finished` marks a closed shard read to
    its end and done; `sequence_number` is None only for a shard that ended without any record.
    """

    def get(self, shard_id: str) -> str | None: ...

    def finished(self, shard_id: str) -> bool:
        """True once the shard was checkpointed finished: the engine does not read it again."""
        ...

    def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None: ...


@dataclass(frozen=True)
class _Checkpoint:
    sequence_number: str | None
    shard_finished: bool


class MemoryCheckpointStore:
    """Checkpoints in memory: for tests, and runs that need not survive a restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checkpoints: dict[str, _Checkpoint] = {}

    def get(self, shard_id: str) -> str | None:
        with self._lock:
            checkpoint = self._checkpoints.get(shard_id)
        return None if checkpoint is None else checkpoint.sequence_number

    def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None:
        with self._lock:
            self._checkpoints[shard_id] = _Checkpoint(sequence_number, shard_finished)

    def finished(self, shard_id: str) -> bool:
        with self._lock:
            checkpoint = self._checkpoints.get(shard_id)
        return checkpoint is not None and checkpoint.shard_finished


ShardState = Literal["open", "closed", "finished"]


class MappingObserver:
    """Told what happens under a mapping; every method does nothing unless overridden.

    Called from the shard's (or queue's) threads, so an observer must be thread-safe.
    """

    def record(self, shard_id: str, name: MetricName, value: float) -> None:
        """A figure of docs/esm.md section 8: an event count is an increment (a number of
        records); `IteratorAge` is one sample, in milliseconds, per batch sent."""

    def shard_state(self, shard_id: str, state: ShardState) -> None:
        """The shard is read (`open`), is listed closed or was read to its end (`closed`), or
        is done and checkpointed so (`finished`). Told once per state, only ever forward."""

    def invoked(self, invocation: Invocation) -> None:
        """One invocation, after the function returned (what its log line says)."""


class Observers(MappingObserver):
    """Tells each of `observers`, in order."""

    def __init__(self, *observers: MappingObserver) -> None:
        self._observers = observers

    def record(self, shard_id: str, name: MetricName, value: float) -> None:
        for observer in self._observers:
            observer.record(shard_id, name, value)

    def shard_state(self, shard_id: str, state: ShardState) -> None:
        for observer in self._observers:
            observer.shard_state(shard_id, state)

    def invoked(self, invocation: Invocation) -> None:
        for observer in self._observers:
            observer.invoked(invocation)


class OnInvocation(MappingObserver):
    """An observer of invocations only: calls `callback` with each."""

    def __init__(self, callback: Callable[[Invocation], None]) -> None:
        self._callback = callback

    def invoked(self, invocation: Invocation) -> None:
        self._callback(invocation)


class MetricCounters(MappingObserver):
    """The figures in memory: counts summed, and each shard's last iterator age."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[tuple[str, MetricName], float] = defaultdict(float)
        self._last_age: dict[str, float] = {}

    def record(self, shard_id: str, name: MetricName, value: float) -> None:
        with self._lock:
            if name == "IteratorAge":
                self._last_age[shard_id] = value
            else:
                self._counts[shard_id, name] += value

    def count(self, name: MetricName, shard_id: str | None = None) -> float:
        """A count for one shard, or summed over all shards."""
        with self._lock:
            return sum(
                value
                for (shard, metric), value in self._counts.items()
                if metric == name and (shard_id is None or shard == shard_id)
            )

    def iterator_age(self, shard_id: str) -> float | None:
        """The last `IteratorAge` sample of a shard (ms), None before its first batch."""
        with self._lock:
            return self._last_age.get(shard_id)
