"""The mapping's state in a DynamoDB table of the same endpoint: checkpoints, shard metrics, lease.

A restarted mapping resumes where the last one left off, and the monitor reads each shard's
counts without reading the stream. The table and its items are documented in
``docs/mapping-state.md``; in short, one partition per mapping (`MappingId.key`):

- ``sk = "lease"``: who runs the mapping now (owner, host, pid, expiry);
- ``sk = "shard#<shard id>"``: the checkpoint (the sequence number to resume *after*) and
  whether the shard is finished;
- ``sk = "metrics#<shard id>"``: counters (atomic ``ADD``), the last iterator age, the shard's
  state and the last batch's outcome.

**One mapping per function and event source at a time.** `acquire_lease` takes the lease with a
conditional write, or waits (saying so in the log) while another mapping holds it. A lease is
taken over when it expires (no renewal for `lease_seconds`), and at once when its holder ran on
this host and its process is gone (a ``kill -9``, a crash). Checkpoints are fenced: `put`
writes only while this mapping holds the lease (one transaction with a condition on the lease),
so a mapping that lost its lease can never move a shard's position. The engine writes a
checkpoint only after a batch is done, so after a ``kill -9`` and a restart no record is skipped
(the batch in flight is delivered again: at least once).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from streams.mapping.function.pool import EmfMetric
from streams.mapping.state import MetricName

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        TransactWriteItemTypeDef,
        UpdateTypeDef,
    )

__all__ = [
    "DEFAULT_TABLE_NAME",
    "DynamoDBCheckpointStore",
    "LeaseBusy",
    "LeaseHeartbeat",
    "LeaseHolder",
    "LeaseLost",
    "MappingId",
    "MappingSnapshot",
    "ShardSnapshot",
    "ShardState",
    "ensure_table",
    "function_counts",
    "read_mappings",
]

logger = logging.getLogger(__name__)

DEFAULT_TABLE_NAME = "streams-local-state"
ShardState = Literal["open", "closed", "finished"]

_LEASE = "lease"
_SHARD = "shard#"
_METRICS = "metrics#"
_COUNT = "count:"  # prefix of counter attributes in a metrics item
_RELEASED = 0.0  # the expiry of a lease given up by its holder


@dataclass(frozen=True)
class MappingId:
    """One event source mapping: a function (its logical id) and an event source (its ARN)."""

    function: str
    source_arn: str

    @property
    def key(self) -> str:
        # Logical ids are alphanumeric, so the first "#" separates the two parts.
        return f"{self.function}#{self.source_arn}"


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a mapping's lease, until when (epoch seconds)."""

    owner: str
    host: str
    pid: int
    expires_at: float
    renewed_at: float

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires_at, tz=UTC).isoformat(timespec="seconds")
        return f"{self.owner} (host {self.host}, pid {self.pid}, lease until {until})"


class LeaseBusy(Exception):
    """Another mapping holds the lease (`acquire_lease` gave up waiting)."""

    def __init__(self, mapping: MappingId, holder: LeaseHolder) -> None:
        super().__init__(
            f"mapping {mapping.function} on {mapping.source_arn} is run by {holder.describe()}"
        )
        self.holder = holder


class LeaseLost(Exception):
    """This mapping no longer holds its lease: another took over. Stop without checkpointing."""


@dataclass(frozen=True)
class ShardSnapshot:
    """What the table says about one shard (the monitor's view)."""

    shard_id: str
    checkpoint: str | None
    finished: bool
    counts: Mapping[str, float]
    iterator_age_ms: float | None
    state: ShardState | None
    last_outcome: str | None
    updated_at: float | None


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


@dataclass(frozen=True)
class MappingSnapshot:
    mapping: MappingId
    lease: LeaseHolder | None
    shards: tuple[ShardSnapshot, ...]  # by shard id


def function_counts(metrics: Iterable[EmfMetric]) -> dict[str, float]:
    """The function's own counters from its EMF metrics (unit ``Count``), named for the monitor.

    ``function:<Metric>`` for a metric published without dimensions beyond ``service``;
    ``function:<Metric>:<dimension>=<value>`` for each further dimension, e.g.
    ``function:RecordsParked:reason=poison``.
    """
    counts: dict[str, float] = {}
    for metric in metrics:
        if metric.unit != "Count":
            continue
        extra = [(k, v) for k, v in sorted(metric.dimensions.items()) if k != "service"]
        name = f"function:{metric.name}" + "".join(f":{k}={v}" for k, v in extra)
        counts[name] = counts.get(name, 0.0) + sum(metric.values)
    return counts


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _pid_alive(pid: int) -> bool:
    """True if process `pid` runs on this host (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs: trust the signal check
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def ensure_table(client: DynamoDBClient, table_name: str = DEFAULT_TABLE_NAME) -> None:
    """Create the state table if it is missing, and wait until it is active."""
    try:
        client.describe_table(TableName=table_name)
    except client.exceptions.ResourceNotFoundException:
        # Another mapping may create it meanwhile.
        with contextlib.suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=table_name,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
    client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


def _lease_holder(item: Mapping[str, AttributeValueTypeDef]) -> LeaseHolder:
    return LeaseHolder(
        owner=item["owner"]["S"],
        host=item["host"]["S"],
        pid=int(item["pid"]["N"]),
        expires_at=float(item["expiresAt"]["N"]),
        renewed_at=float(item["renewedAt"]["N"]),
    )


def _snapshot(mapping: MappingId, items: Iterable[Mapping[str, Any]]) -> MappingSnapshot:
    lease: LeaseHolder | None = None
    checkpoints: dict[str, Mapping[str, Any]] = {}
    metrics: dict[str, Mapping[str, Any]] = {}
    for item in items:
        sk = item["sk"]["S"]
        if sk == _LEASE:
            lease = _lease_holder(item)
        elif sk.startswith(_SHARD):
            checkpoints[sk.removeprefix(_SHARD)] = item
        elif sk.startswith(_METRICS):
            metrics[sk.removeprefix(_METRICS)] = item
    shards = []
    for shard_id in sorted(checkpoints.keys() | metrics.keys()):
        checkpoint = checkpoints.get(shard_id, {})
        figures = metrics.get(shard_id, {})
        updated = [float(i["updatedAt"]["N"]) for i in (checkpoint, figures) if "updatedAt" in i]
        shards.append(
            ShardSnapshot(
                shard_id=shard_id,
                checkpoint=checkpoint.get("sequenceNumber", {}).get("S"),
                finished=bool(checkpoint.get("finished", {}).get("BOOL", False)),
                counts={
                    name.removeprefix(_COUNT): float(value["N"])
                    for name, value in sorted(figures.items())
                    if name.startswith(_COUNT)
                },
                iterator_age_ms=(
                    float(figures["iteratorAgeMs"]["N"]) if "iteratorAgeMs" in figures else None
                ),
                state=figures.get("state", {}).get("S"),
                last_outcome=figures.get("lastOutcome", {}).get("S"),
                updated_at=max(updated) if updated else None,
            )
        )
    return MappingSnapshot(mapping, lease, tuple(shards))


def read_mappings(
    client: DynamoDBClient, table_name: str = DEFAULT_TABLE_NAME
) -> list[MappingSnapshot]:
    """Every mapping the table knows (for the monitor); none when there is no table yet."""
    items: dict[str, list[dict[str, Any]]] = {}
    ids: dict[str, MappingId] = {}
    try:
        for page in client.get_paginator("scan").paginate(TableName=table_name):
            for item in page.get("Items", []):
                pk = item["pk"]["S"]
                items.setdefault(pk, []).append(dict(item))
                ids[pk] = MappingId(item["function"]["S"], item["eventSourceARN"]["S"])
    except client.exceptions.ResourceNotFoundException:
        return []
    return [_snapshot(ids[pk], items[pk]) for pk in sorted(items)]


class DynamoDBCheckpointStore:
    """One mapping's checkpoints, shard metrics and lease (see the module docstring).

    A `streams.mapping.state.CheckpointStore` and `MetricsSink`. `clock` (epoch seconds) and
    `sleep` are injectable for the lease's rules; `host`, `pid` and `pid_alive` identify this
    process and tell whether a holder's process on this host still runs. Creates the table if
    it is missing.

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
        pid_alive: Callable[[int], bool] = _pid_alive,
    ) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        self.mapping = mapping
        self.client: DynamoDBClient = client if client is not None else boto3.client("dynamodb")
        self.table_name = table_name
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.flush_seconds = flush_seconds
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._sleep = sleep
        self._pid_alive = pid_alive
        self._key = mapping.key
        self._lock = threading.Lock()
        self._pending: dict[str, _Figures] = {}
        self._flushed_at: dict[str, float] = {}
        self._writing: dict[str, threading.Lock] = {}
        ensure_table(self.client, table_name)

    # --- the lease ------------------------------------------------------------------------------

    def acquire_lease(
        self, timeout: float | None = None, *, stop: threading.Event | None = None
    ) -> LeaseHolder | None:
        """Take the mapping's lease, waiting while another live mapping holds it.

        Logs one WARNING per holder waited for. Raises `LeaseBusy` after `timeout` seconds
        (None: wait as long as it takes). With `stop`, the wait ends as soon as it is set, and
        then the result is None (only then).
        """
        give_up = None if timeout is None else self._clock() + timeout
        announced: str | None = None
        while stop is None or not stop.is_set():
            holder = self._try_acquire()
            if holder.owner == self.owner:
                return holder
            if give_up is not None and self._clock() >= give_up:
                raise LeaseBusy(self.mapping, holder)
            if holder.owner != announced:
                announced = holder.owner
                logger.warning(
                    "mapping %s on %s: waiting, another mapping runs it: %s",
                    self.mapping.function,
                    self.mapping.source_arn,
                    holder.describe(),
                )
            if stop is None:
                self._sleep(self.poll_seconds)
            else:
                stop.wait(self.poll_seconds)
        return None

    def renew_lease(self) -> LeaseHolder:
        """Extend the lease by `lease_seconds` (the heartbeat). Raises `LeaseLost`."""
        now = self._clock()
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self._item_key(_LEASE),
                UpdateExpression="SET expiresAt = :expires, renewedAt = :now ADD version :one",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":expires": {"N": _number(now + self.lease_seconds)},
                    ":now": {"N": _number(now)},
                    ":one": {"N": "1"},
                    ":owner": {"S": self.owner},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            raise self._lost() from error
        return LeaseHolder(self.owner, self.host, self.pid, now + self.lease_seconds, now)

    def release_lease(self) -> None:
        """On a clean stop: write the buffered metrics, and give the lease up so that the next
        mapping starts at once (it expires now: `expires_at` 0)."""
        self.flush_metrics()
        # Not ours any more: nothing to give up.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=self._item_key(_LEASE),
                UpdateExpression="SET expiresAt = :released ADD version :one",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":released": {"N": _number(_RELEASED)},
                    ":one": {"N": "1"},
                    ":owner": {"S": self.owner},
                },
            )

    def heartbeat(
        self, on_lost: Callable[[LeaseLost], None], interval: float | None = None
    ) -> LeaseHeartbeat:
        """A thread that renews the lease every `interval` seconds (default a third of
        `lease_seconds`) while the returned context is entered."""
        return LeaseHeartbeat(self, on_lost, interval or self.lease_seconds / 3)

    def _try_acquire(self) -> LeaseHolder:
        """One attempt: the holder afterwards (ourselves when it worked)."""
        now = self._clock()
        current = self._get(_LEASE)
        version = 0
        if current is not None:
            holder = _lease_holder(current)
            version = int(current["version"]["N"])
            if holder.owner != self.owner:
                if holder.expires_at > now and not self._holder_died_here(holder):
                    return holder
                if holder.expires_at > _RELEASED:
                    logger.warning(
                        "mapping %s on %s: taking over the lease of %s: %s",
                        self.mapping.function,
                        self.mapping.source_arn,
                        holder.describe(),
                        "it expired" if holder.expires_at <= now else "its process is gone",
                    )
        item: dict[str, AttributeValueTypeDef] = {
            **self._item_key(_LEASE),
            **self._mapping_attributes(),
            "owner": {"S": self.owner},
            "host": {"S": self.host},
            "pid": {"N": str(self.pid)},
            "expiresAt": {"N": _number(now + self.lease_seconds)},
            "renewedAt": {"N": _number(now)},
            "version": {"N": str(version + 1)},
        }
        try:
            # `version` only grows (a release keeps the item), so a lease read as expired
            # cannot be taken from a mapping that acquired it meanwhile.
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR version = :seen",
                ExpressionAttributeValues={":seen": {"N": str(version)}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return self._try_acquire()  # another mapping moved first: look again
        return _lease_holder(item)

    def _holder_died_here(self, holder: LeaseHolder) -> bool:
        # Only a process on this host can be checked; elsewhere the lease must expire.
        return holder.host == self.host and not self._pid_alive(holder.pid)

    def _lost(self) -> LeaseLost:
        current = self._get(_LEASE)
        now_held_by = _lease_holder(current).describe() if current else "nobody"
        return LeaseLost(
            f"mapping {self.mapping.function} on {self.mapping.source_arn}: this mapping "
            f"({self.owner}) does not hold the lease; now held by {now_held_by}"
        )

    # --- checkpoints (CheckpointStore) -----------------------------------------------------------

    def get(self, shard_id: str) -> str | None:
        """The sequence number to resume *after*; None when the shard has no checkpoint."""
        item = self._get(_SHARD + shard_id)
        return item.get("sequenceNumber", {}).get("S") if item else None

    def finished(self, shard_id: str) -> bool:
        """True once a closed shard was read to its end and done (its children may start)."""
        item = self._get(_SHARD + shard_id)
        return bool(item.get("finished", {}).get("BOOL", False)) if item else False

    def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None:
        """Checkpoint a shard after a batch is done; only while this mapping holds the lease.

        `sequence_number` None (a shard that ended without a record) keeps any earlier one.
        Raises `LeaseLost` (nothing written) when another mapping took the lease over.
        """
        names = {"#finished": "finished", "#updated": "updatedAt", "#function": "function"}
        values: dict[str, AttributeValueTypeDef] = {
            ":finished": {"BOOL": shard_finished},
            ":updated": {"N": _number(self._clock())},
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
            {
                "ConditionCheck": {
                    "TableName": self.table_name,
                    "Key": self._item_key(_LEASE),
                    "ConditionExpression": "#owner = :owner",
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": {":owner": {"S": self.owner}},
                }
            },
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": self._item_key(_SHARD + shard_id),
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

    # --- metrics (MetricsSink) -------------------------------------------------------------------

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
        names: ESM-SPEC section 8's, and the function's own from `function_counts`."""
        figures = _Figures(dict(counts or {}), iterator_age_ms, state, last_outcome)
        with self._lock:
            self._pending[shard_id] = self._take_pending(shard_id).merge(figures)
        self._write_pending(shard_id)

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
            ":updated": {"N": _number(self._clock())},
        }
        assignments = [
            "shardId = :shard",
            "#function = :function",
            "eventSourceARN = :arn",
            "#updated = :updated",
        ]
        if figures.iterator_age_ms is not None:
            assignments += ["iteratorAgeMs = :age", "iteratorAgeAt = :updated"]
            values[":age"] = {"N": _number(figures.iterator_age_ms)}
        if figures.state is not None:
            names["#state"] = "state"
            assignments.append("#state = :state")
            values[":state"] = {"S": figures.state}
        if figures.last_outcome is not None:
            assignments.append("lastOutcome = :outcome")
            values[":outcome"] = {"S": figures.last_outcome}
        additions = []
        for index, (name, value) in enumerate(sorted(figures.counts.items())):
            names[f"#c{index}"] = _COUNT + name
            values[f":c{index}"] = {"N": _number(value)}
            additions.append(f"#c{index} :c{index}")
        expression = "SET " + ", ".join(assignments)
        if additions:
            expression += " ADD " + ", ".join(additions)
        return {
            "TableName": self.table_name,
            "Key": self._item_key(_METRICS + shard_id),
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    # --- the monitor's view ----------------------------------------------------------------------

    def read_all(self) -> MappingSnapshot:
        """The lease and every shard's checkpoint and metrics, in one query."""
        items: list[dict[str, Any]] = []
        for page in self.client.get_paginator("query").paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": self._key}},
            ConsistentRead=True,
        ):
            items.extend(dict(item) for item in page.get("Items", []))
        return _snapshot(self.mapping, items)

    # ---------------------------------------------------------------------------------------------

    def _item_key(self, sk: str) -> dict[str, AttributeValueTypeDef]:
        return {"pk": {"S": self._key}, "sk": {"S": sk}}

    def _mapping_attributes(self) -> dict[str, AttributeValueTypeDef]:
        return {
            "function": {"S": self.mapping.function},
            "eventSourceARN": {"S": self.mapping.source_arn},
        }

    def _get(self, sk: str) -> Mapping[str, Any] | None:
        return self.client.get_item(
            TableName=self.table_name, Key=self._item_key(sk), ConsistentRead=True
        ).get("Item")


class LeaseHeartbeat:
    """Renews a store's lease every `interval` seconds in a thread, while entered.

    Calls `on_lost` once (from the thread) if another mapping took the lease over, then stops.
    A failed call to DynamoDB is logged and retried at the next beat: until the lease expires,
    no other mapping takes it.
    """

    def __init__(
        self,
        store: DynamoDBCheckpointStore,
        on_lost: Callable[[LeaseLost], None],
        interval: float,
    ) -> None:
        self._store = store
        self._on_lost = on_lost
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-heartbeat-{store.mapping.function}", daemon=True
        )

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._store.renew_lease()
            except LeaseLost as lost:
                self._on_lost(lost)
                return
            except (BotoCoreError, ClientError) as error:
                logger.warning("lease renewal failed (retrying): %s", error)
