"""The mapping's durable state, through seams: checkpoints and metrics.

`CheckpointStore` is what the engine needs to resume a shard; `streams.mapping.state.table`
keeps checkpoints in a DynamoDB table, `MemoryCheckpointStore` in memory. `MetricsSink` receives
the per-shard figures of ESM-SPEC section 8 so a store can keep them for the monitor;
`MetricCounters` adds them up in memory.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Final, Literal, Protocol, get_args

__all__ = [
    "EVENT_COUNT_METRICS",
    "EVENT_COUNT_NAMES",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "MetricCounters",
    "MetricName",
    "MetricsSink",
]


class CheckpointStore(Protocol):
    """Where each shard resumes.

    A checkpoint is the sequence number of the last record fully done (delivered, filtered out,
    or given up on): the shard resumes *after* it. `shard_finished` marks a closed shard read to
    its end and done; `sequence_number` is None only for a shard that ended without any record.
    """

    def get(self, shard_id: str) -> str | None: ...

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


# ESM-SPEC section 8's event counts, in its order: emitted only with
# `MetricsConfig: {Metrics: [EventCount]}` (IteratorAge always is).
EventCountName = Literal[
    "PolledEventCount",
    "FilteredOutEventCount",
    "InvokedEventCount",
    "FailedInvokeEventCount",
    "DroppedEventCount",
    "OnFailureDestinationDeliveredEventCount",
    "DestinationDeliveryFailures",
]
MetricName = Literal["IteratorAge"] | EventCountName

EVENT_COUNT_NAMES: Final[tuple[EventCountName, ...]] = get_args(EventCountName)
EVENT_COUNT_METRICS: Final[frozenset[MetricName]] = frozenset(EVENT_COUNT_NAMES)


class MetricsSink(Protocol):
    """Receives metric values per shard.

    Event counts are increments (a number of records); `IteratorAge` is one sample, in
    milliseconds, per batch sent to the function.
    """

    def record(self, shard_id: str, name: MetricName, value: float) -> None: ...


class MetricCounters:
    """A `MetricsSink` in memory: counts summed, and each shard's last iterator age."""

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
