"""The mapping's state in a DynamoDB table of the same endpoint: checkpoints and shard metrics.

A restarted mapping resumes where the last one left off, and the monitor reads each shard's
counts without reading the stream (docs/mapping-state.md; the layout is
`streams.mapping.state.layout`). Checkpoints are fenced by the lease
(`streams.mapping.state.lease`): `put` writes only while this mapping holds it, in one
transaction with a condition on the lease. The engine writes a checkpoint only after a batch is
done, so after a ``kill -9`` and a restart no record is skipped (the batch in flight is
delivered again: at least once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from streams.mapping.function.emf import function_counts
from streams.mapping.function.pool import WorkerInvokeResult
from streams.mapping.invoke import Invocation
from streams.mapping.state import MappingObserver, ShardState
from streams.mapping.state.layout import (
    COUNT_PREFIX,
    DEFAULT_TABLE_NAME,
    METRICS_PREFIX,
    SHARD_PREFIX,
    MappingId,
    ensure_table,
    number,
)
from streams.mapping.state.lease import LeasedMapping, pid_alive
from streams.mapping.state.snapshot import MappingSnapshot, snapshot_of
from streams.metrics import MetricName

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        TransactWriteItemTypeDef,
        UpdateTypeDef,
    )

__all__ = ["DynamoDBCheckpointStore"]

logger = logging.getLogger("streams.mapping.state")


@dataclass
class _Figures:
    """A shard's metrics not written yet (`record` buffers them)."""

    counts: dict[str, float] = field(default_factory=dict)
    iterator_age_ms: float | None = None
    state: ShardState | None = None
    last_outcome: str | None = None

    def merge(self, later: _Figures) -> _Figures:
        counts = dict(self.counts)
        for name, value in later.counts.items():
            counts[name] = counts.get(name, 0.0) + value
        return _Figures(
            counts,
            later.iterator_age_ms if later.iterator_age_ms is not None else self.iterator_age_ms,
            later.state if later.state is not None else self.state,
            later.last_outcome if later.last_outcome is not None else self.last_outcome,
        )


class DynamoDBCheckpointStore(LeasedMapping, MappingObserver):
    """One mapping's checkpoints, shard metrics and lease (see the module docstring).

    A `streams.mapping.state.CheckpointStore` and `MappingObserver`: besides checkpoints it
    keeps, per shard, the engine's figures, the shard's state, the last batch's outcome and the
    function's own counts (from the EMF documents its worker printed), for the monitor. The
    lease's settings are `LeasedMapping`'s. Creates the table if it is missing.

    Metrics from `record` are buffered per shard and written with the shard's next checkpoint
    (one transaction) or after `flush_seconds`, so that they cost the stream's throughput little;
    `record_metrics` writes at once; `flush_metrics` (and `release_lease`) what is buffered.
    """

    def __init__(
        self,
        mapping: MappingId,
        *,
        client: DynamoDBClient | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        lease_seconds: float = 30.0,
        poll_seconds: float = 2.0,
        flush_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        host: str | None = None,
        pid: int | None = None,
        pid_alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        super().__init__(
            mapping,
            client=client if client is not None else boto3.client("dynamodb"),
            table_name=table_name,
            lease_seconds=lease_seconds,
            poll_seconds=poll_seconds,
            clock=clock,
            sleep=sleep,
            host=host,
            pid=pid,
            pid_alive=pid_alive,
        )
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._pending: dict[str, _Figures] = {}
        self._flushed_at: dict[str, float] = {}
        self._writing: dict[str, threading.Lock] = {}
        ensure_table(self.client, table_name)

    def release_lease(self) -> None:
        """On a clean stop: write the buffered metrics, then give the lease up (see
        `LeasedMapping.release_lease`)."""
        self.flush_metrics()
        super().release_lease()

    def get(self, shard_id: str) -> str | None:
        """The sequence number to resume *after*; None when the shard has no checkpoint."""
        item = self._get(SHARD_PREFIX + shard_id)
        return item.get("sequenceNumber", {}).get("S") if item else None

    def finished(self, shard_id: str) -> bool:
        """True once a closed shard was read to its end and done (its children may start)."""
        item = self._get(SHARD_PREFIX + shard_id)
        return bool(item.get("finished", {}).get("BOOL", False)) if item else False

    def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None:
        """Checkpoint a shard after a batch is done; only while this mapping holds the lease.

        `sequence_number` None (a shard that ended without a record) keeps any earlier one.
        Raises `LeaseLost` (nothing written) when another mapping took the lease over.
        """
        names = {"#finished": "finished", "#updated": "updatedAt", "#function": "function"}
        values: dict[str, AttributeValueTypeDef] = {
            ":finished": {"BOOL": shard_finished},
            ":updated": {"N": number(self._clock())},
            ":shard": {"S": shard_id},
            ":function": {"S": self.mapping.function},
            ":arn": {"S": self.mapping.source_arn},
        }
        assignments = [
            "#finished = :finished",
            "#updated = :updated",
            "shardId = :shard",
            "#function = :function",
            "eventSourceARN = :arn",
        ]
        if sequence_number is not None:
            assignments.append("sequenceNumber = :sequence")
            values[":sequence"] = {"S": sequence_number}
        items: list[TransactWriteItemTypeDef] = [
            self.lease_condition(),
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": self._item_key(SHARD_PREFIX + shard_id),
                    "UpdateExpression": "SET " + ", ".join(assignments),
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            },
        ]
        with self._writing_lock(shard_id):
            figures = self._take_due(shard_id)
            if figures is not None:  # the buffered metrics, in the same round trip
                items.append({"Update": self._figures_update(shard_id, figures)})
            try:
                self.client.transact_write_items(TransactItems=items)
            except Exception as error:
                if figures is not None:
                    self._restore_pending(shard_id, figures)
                if isinstance(error, self.client.exceptions.TransactionCanceledException):
                    reasons = error.response.get("CancellationReasons", [])
                    if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                        raise self._lost() from error
                raise

    def record(self, shard_id: str, name: MetricName, value: float) -> None:
        """One metric value: an event count is added, an `IteratorAge` sample replaces the last.

        Buffered per shard: written at the shard's next checkpoint (in the same transaction),
        or once `flush_seconds` have passed since the shard's last metrics write.
        """
        with self._lock:
            figures = self._pending.setdefault(shard_id, _Figures())
            if name == "IteratorAge":
                figures.iterator_age_ms = value
            else:
                figures.counts[name] = figures.counts.get(name, 0.0) + value
            now = self._clock()
            if now - self._flushed_at.get(shard_id, -math.inf) < self.flush_seconds:
                return
            self._flushed_at[shard_id] = now  # this call writes them: others go on buffering
        try:
            self._write_pending(shard_id)
        except (BotoCoreError, ClientError) as error:
            # Metrics must not stop delivery: kept, and written with the next flush.
            logger.warning("shard %s: metrics not written yet (%s)", shard_id, error)

    def record_metrics(
        self,
        shard_id: str,
        counts: Mapping[str, float] | None = None,
        *,
        iterator_age_ms: float | None = None,
        state: ShardState | None = None,
        last_outcome: str | None = None,
    ) -> None:
        """Add `counts` to the shard's counters (atomic ``ADD``: concurrent writers add up) and
        set what is given of the rest, now, in one write with what `record` buffered. Counter
        names: those of docs/esm.md section 8, and the function's own from `function_counts`."""
        figures = _Figures(dict(counts or {}), iterator_age_ms, state, last_outcome)
        with self._lock:
            self._pending[shard_id] = self._take_pending(shard_id).merge(figures)
        self._write_pending(shard_id)

    def shard_state(self, shard_id: str, state: ShardState) -> None:
        self._write_now(shard_id, {}, state=state)

    def invoked(self, invocation: Invocation) -> None:
        if invocation.shard_id is None:  # a queue's: not a shard of this mapping
            return
        result = invocation.result
        counts = function_counts(result.metrics) if isinstance(result, WorkerInvokeResult) else {}
        self._write_now(invocation.shard_id, counts, last_outcome=invocation.outcome)

    def _write_now(
        self,
        shard_id: str,
        counts: Mapping[str, float],
        *,
        state: ShardState | None = None,
        last_outcome: str | None = None,
    ) -> None:
        """`record_metrics`, for the observer: a failed write never stops delivery (the figures
        are kept and written with the shard's next metrics write)."""
        try:
            self.record_metrics(shard_id, counts, state=state, last_outcome=last_outcome)
        except (BotoCoreError, ClientError) as error:
            logger.warning("shard %s: metrics not written yet (%s)", shard_id, error)

    def flush_metrics(self) -> None:
        """Write what `record` buffered, for every shard (call on stop)."""
        with self._lock:
            shard_ids = sorted(self._pending)
        for shard_id in shard_ids:
            self._write_pending(shard_id)

    def _writing_lock(self, shard_id: str) -> threading.Lock:
        """Held while a write to the shard's metrics item is in flight: one at a time.

        DynamoDB applies an ``ADD`` atomically, but moto (the local endpoint) applies it as an
        unlocked read-modify-write, so two concurrent writes to one item lose one's counts.
        Within this process, writes to a shard's item are the only concurrent ones (the lease
        keeps other mappings out), and one at a time costs nothing while they are rare.
        """
        with self._lock:
            return self._writing.setdefault(shard_id, threading.Lock())

    def _take_due(self, shard_id: str) -> _Figures | None:
        """The shard's pending figures, taken for a write that starts now."""
        with self._lock:
            figures = self._pending.pop(shard_id, None)
            if figures is not None:
                self._flushed_at[shard_id] = self._clock()
            return figures

    def _take_pending(self, shard_id: str) -> _Figures:
        return self._pending.pop(shard_id, None) or _Figures()

    def _restore_pending(self, shard_id: str, figures: _Figures) -> None:
        with self._lock:
            self._pending[shard_id] = figures.merge(self._take_pending(shard_id))

    def _write_pending(self, shard_id: str) -> None:
        """Write the shard's pending figures, after any write already in flight for it (which
        may have taken them: then there is nothing left to write). Kept on failure."""
        with self._writing_lock(shard_id):
            figures = self._take_due(shard_id)
            if figures is None:
                return
            try:
                self.client.update_item(**self._figures_update(shard_id, figures))
            except Exception:
                self._restore_pending(shard_id, figures)  # written with the next flush
                raise

    def _figures_update(self, shard_id: str, figures: _Figures) -> UpdateTypeDef:
        """One UpdateItem (or transaction item) for a shard's metrics item."""
        names: dict[str, str] = {"#function": "function", "#updated": "updatedAt"}
        values: dict[str, AttributeValueTypeDef] = {
            ":shard": {"S": shard_id},
            ":function": {"S": self.mapping.function},
            ":arn": {"S": self.mapping.source_arn},
            ":updated": {"N": number(self._clock())},
        }
        assignments = [
            "shardId = :shard",
            "#function = :function",
            "eventSourceARN = :arn",
            "#updated = :updated",
        ]
        if figures.iterator_age_ms is not None:
            assignments += ["iteratorAgeMs = :age", "iteratorAgeAt = :updated"]
            values[":age"] = {"N": number(figures.iterator_age_ms)}
        if figures.state is not None:
            names["#state"] = "state"
            assignments.append("#state = :state")
            values[":state"] = {"S": figures.state}
        if figures.last_outcome is not None:
            assignments.append("lastOutcome = :outcome")
            values[":outcome"] = {"S": figures.last_outcome}
        additions = []
        for index, (name, value) in enumerate(sorted(figures.counts.items())):
            names[f"#c{index}"] = COUNT_PREFIX + name
            values[f":c{index}"] = {"N": number(value)}
            additions.append(f"#c{index} :c{index}")
        expression = "SET " + ", ".join(assignments)
        if additions:
            expression += " ADD " + ", ".join(additions)
        return {
            "TableName": self.table_name,
            "Key": self._item_key(METRICS_PREFIX + shard_id),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def read_all(self) -> MappingSnapshot:
        """The lease and every shard's checkpoint and metrics, in one query."""
        items: list[dict[str, Any]] = []
        for page in self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": self.mapping.key}},
            ConsistentRead=True,
        ):
            items.extend(dict(item) for item in page.get("Items", []))
        return snapshot_of(self.mapping, items)
