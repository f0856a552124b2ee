"""The local mapping's monitor: its state table and the stack's queues, nothing else.

One row per shard (docs/mapping-state.md, read through `read_mappings`). Records/s comes from the
counters' growth between two reads, ``(done_now - done_before) / (t_now - t_before)`` with the
injected clock, so the first read of a `LocalMonitor` has none.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from streams.mapping.state.layout import DEFAULT_TABLE_NAME
from streams.mapping.state.snapshot import MappingSnapshot, ShardSnapshot, read_mappings
from streams.metrics import (
    EVENT_COUNT_NAMES,
    MAPPING_COUNT_NAMES,
    function_count_name,
    parse_function_count,
)
from streams.monitor.model import MonitorSnapshot, QueueRef, Row, queue_depth, totals

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

__all__ = ["LocalMonitor"]


# The batch core's counters, as the local mapping keeps them (docs/mapping-state.md).
_PROCESSED = function_count_name("RecordsProcessed", {})
_PARKED = function_count_name("RecordsParked", {})
#: What a row shows of the state table's counts: the event counts and the mapping's own.
_COUNTED = (*EVENT_COUNT_NAMES, *MAPPING_COUNT_NAMES)


def _parked_by_reason(counts: Mapping[str, float]) -> dict[str, float]:
    by_reason: dict[str, float] = {}
    for name, value in counts.items():
        parsed = parse_function_count(name)
        if parsed is not None and parsed[0] == "RecordsParked" and "reason" in parsed[1]:
            by_reason[parsed[1]["reason"]] = value
    return by_reason


class LocalMonitor:
    """Reads the local mapping's state table and the queues' attributes (see the module doc).

    `clock` (epoch seconds) times each read: records/s is the growth of the done counters
    over the last `rate_window` seconds of reads (between two reads when they are further apart).
    """

    two_reads_for_rates = True

    def __init__(
        self,
        *,
        dynamodb: DynamoDBClient,
        sqs: SQSClient,
        queues: Sequence[QueueRef] = (),
        table_name: str = DEFAULT_TABLE_NAME,
        clock: Callable[[], float] = time.time,
        rate_window: float = 5.0,
    ) -> None:
        self.dynamodb = dynamodb
        self.sqs = sqs
        self.queues = tuple(queues)
        self.table_name = table_name
        self._clock = clock
        self.rate_window = rate_window
        # Per shard: (at, done) of recent reads, the oldest at least `rate_window` old.
        self._done_before: dict[tuple[str, str], collections.deque[tuple[float, float]]] = {}

    def snapshot(self) -> MonitorSnapshot:
        mappings = read_mappings(self.dynamodb, self.table_name)
        now = self._clock()
        ambiguous = len(mappings) > 1  # shard ids then need their function to tell them apart
        rows = tuple(
            self._row(mapping, shard, now, ambiguous)
            for mapping in mappings
            for shard in mapping.shards
        )
        queues = tuple(queue_depth(self.sqs, queue, None) for queue in self.queues)
        return MonitorSnapshot(
            taken_at=now, source="local", rows=rows, queues=queues, totals=totals(rows)
        )

    def _row(
        self, mapping: MappingSnapshot, shard: ShardSnapshot, now: float, ambiguous: bool
    ) -> Row:
        counts = shard.counts
        done = counts.get(_PROCESSED, 0.0) + counts.get(_PARKED, 0.0)
        key = (mapping.mapping.key, shard.shard_id)
        history = self._done_before.setdefault(key, collections.deque())
        if history and done < history[-1][1]:
            history.clear()  # a counter that shrank belongs to a table made anew
        history.append((now, done))
        # Counters move a batch at a time: measured over a few seconds, the rate does not swing
        # between a batch and none from one read to the next.
        while len(history) > 2 and now - history[1][0] >= self.rate_window:
            history.popleft()
        before_at, before_done = history[0]
        rate = (done - before_done) / (now - before_at) if now > before_at else None
        by_reason = _parked_by_reason(counts)
        function = mapping.mapping.function
        return Row(
            label=f"{function} {shard.shard_id}" if ambiguous else shard.shard_id,
            function=function,
            event_source_arn=mapping.mapping.source_arn,
            shard_id=shard.shard_id,
            mapping_uuid=None,
            mapping_state=_lease_state(mapping, now),
            state="finished" if shard.finished else shard.state,
            checkpoint=shard.checkpoint,
            iterator_age_ms=shard.iterator_age_ms,
            records_per_second=rate,
            processed=counts.get(_PROCESSED, 0.0),
            parked=counts.get(_PARKED, sum(by_reason.values())),
            parked_by_reason=by_reason,
            event_counts={name: counts[name] for name in _COUNTED if name in counts},
            last_outcome=shard.last_outcome,
            updated_at=shard.updated_at,
        )


def _lease_state(mapping: MappingSnapshot, now: float) -> str:
    lease = mapping.lease
    if lease is None:
        return "not started"
    if lease.expires_at > now:
        return f"running on {lease.host} (pid {lease.pid})"
    return "stopped"
