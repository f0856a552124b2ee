"""What `streams monitor` shows, whatever it reads it from: one snapshot shape.

A `MonitorSnapshot` holds a row per shard (locally) or per function and event source (AWS), the
totals, and the depths of the stack's queues. Two monitors take snapshots:
`streams.monitor.local.LocalMonitor` (the local mapping's state table) and
`streams.monitor.cloudwatch.CloudWatchMonitor` (a deployed function). Neither ever opens a reader
on a shard: DynamoDB Streams allows two per shard, and the mapping needs them.

**Records/s** is the rate of records the function is done with (``RecordsProcessed`` plus
``RecordsParked``, the batch core's own counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from streams.errors import UserError
from streams.local.stack import stack_outputs

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "DEAD_LETTER",
    "ON_FAILURE",
    "Breach",
    "Monitor",
    "MonitorSnapshot",
    "QueueDepth",
    "QueueRef",
    "QueueRole",
    "Row",
    "Sample",
    "Totals",
    "breaches",
    "queue_depth",
    "queues_from_outputs",
    "queues_from_stack",
    "totals",
]


DEAD_LETTER: Final = "dead-letter"

ON_FAILURE: Final = "on-failure"

QueueRole = Literal["dead-letter", "on-failure"]


# The stack outputs that name the queues (template.yaml), locally as on AWS.
_QUEUE_OUTPUTS: Final[Mapping[str, QueueRole]] = {
    "DeadLetterQueueUrl": DEAD_LETTER,
    "OnFailureQueueUrl": ON_FAILURE,
}


@dataclass(frozen=True)
class QueueRef:
    """A queue the monitor watches: the dead-letter queue or the on-failure queue."""

    role: QueueRole
    url: str

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class QueueDepth:
    """A queue's depth now (SQS), and on AWS the age of its oldest message (CloudWatch)."""

    queue: QueueRef
    visible: int
    in_flight: int
    oldest_age_seconds: float | None  # None locally: only CloudWatch publishes it

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.queue.role,
            "name": self.queue.name,
            "url": self.queue.url,
            "visible": self.visible,
            "inFlight": self.in_flight,
            "oldestAgeSeconds": self.oldest_age_seconds,
        }


@dataclass(frozen=True)
class Row:
    """One shard of a local mapping, or one event source of a deployed function.

    On AWS the function's own figures (iterator age, records/s, processed, parked) are the
    function's, repeated on each of its event sources; `event_counts` are the event source's.
    Locally counts are since the mapping first ran; on AWS, sums over the monitor's window.
    """

    label: str  # how the views name the row: the shard id locally, the function on AWS
    function: str
    event_source_arn: str | None
    shard_id: str | None  # local only
    mapping_uuid: str | None  # AWS only
    mapping_state: str | None  # locally who runs the mapping; on AWS the mapping's State
    state: str | None  # the shard's: open, closed or finished (local only)
    checkpoint: str | None  # local only: the shard resumes after this sequence number
    iterator_age_ms: float | None
    records_per_second: float | None
    processed: float | None
    parked: float | None
    parked_by_reason: Mapping[str, float]
    event_counts: Mapping[str, float]
    last_outcome: str | None
    # Epoch seconds the figures are from: locally the mapping's last write for the shard; on
    # AWS the start of the latest minute with an iterator age.
    updated_at: float | None

    @property
    def current_age_ms(self) -> float | None:
        """The iterator age that still matters: a finished shard has no backlog."""
        return None if self.state == "finished" else self.iterator_age_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "function": self.function,
            "eventSourceARN": self.event_source_arn,
            "shardId": self.shard_id,
            "mappingUUID": self.mapping_uuid,
            "mappingState": self.mapping_state,
            "state": self.state,
            "checkpoint": self.checkpoint,
            "iteratorAgeMs": self.iterator_age_ms,
            "recordsPerSecond": self.records_per_second,
            "processed": self.processed,
            "parked": self.parked,
            "parkedByReason": dict(self.parked_by_reason),
            "eventCounts": dict(self.event_counts),
            "lastOutcome": self.last_outcome,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True)
class Totals:
    """All rows together (on AWS each function's own figures count once)."""

    processed: float | None
    parked: float | None
    parked_by_reason: Mapping[str, float]
    records_per_second: float | None
    max_iterator_age_ms: float | None
    event_counts: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "parked": self.parked,
            "parkedByReason": dict(self.parked_by_reason),
            "recordsPerSecond": self.records_per_second,
            "maxIteratorAgeMs": self.max_iterator_age_ms,
            "eventCounts": dict(self.event_counts),
        }


@dataclass(frozen=True)
class Sample:
    """Iterator age (by row label; labels without an age are absent) and throughput at `at`."""

    at: float  # epoch seconds
    iterator_age_ms: Mapping[str, float]
    records_per_second: float | None


@dataclass(frozen=True)
class MonitorSnapshot:
    """What one read of the monitor's source says."""

    taken_at: float  # epoch seconds
    source: Literal["local", "cloudwatch"]
    rows: tuple[Row, ...]
    queues: tuple[QueueDepth, ...]
    totals: Totals
    window_seconds: float | None = None  # CloudWatch: counts are sums over this window
    # CloudWatch: the window's per-minute samples (it keeps the history itself).
    series: tuple[Sample, ...] = ()

    def sample(self) -> Sample:
        """This snapshot as one sample of the history (finished shards have no age)."""
        rates = [row.records_per_second for row in self.rows if row.records_per_second is not None]
        return Sample(
            at=self.taken_at,
            iterator_age_ms={
                row.label: row.current_age_ms for row in self.rows if row.current_age_ms is not None
            },
            records_per_second=sum_or_none(rates),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "takenAt": iso_time(self.taken_at),
            "source": self.source,
            "windowSeconds": self.window_seconds,
            "rows": [row.to_json() for row in self.rows],
            "queues": [queue.to_json() for queue in self.queues],
            "totals": self.totals.to_json(),
        }


@dataclass(frozen=True)
class Breach:
    """A row whose iterator age is above the limit (`streams monitor --fail-above`)."""

    row: Row

    def describe(self) -> str:
        age = f"{(self.row.iterator_age_ms or 0.0) / 1000:.1f} s"
        if self.row.shard_id is not None:
            return f"shard {self.row.shard_id} of {self.row.function} at {age}"
        return f"function {self.row.function} at {age}"


def breaches(snapshot: MonitorSnapshot, limit_seconds: float) -> list[Breach]:
    """The rows whose iterator age is above `limit_seconds` (finished shards never are)."""
    return [
        Breach(row)
        for row in snapshot.rows
        if row.current_age_ms is not None and row.current_age_ms > limit_seconds * 1000
    ]


class Monitor(Protocol):
    """A source of snapshots. `two_reads_for_rates`: its first snapshot has no records/s."""

    two_reads_for_rates: bool

    def snapshot(self) -> MonitorSnapshot: ...


def queues_from_outputs(outputs: Mapping[str, str]) -> tuple[QueueRef, ...]:
    """The dead-letter and on-failure queues a stack's outputs name (template.yaml's names)."""
    return tuple(
        QueueRef(role, outputs[key]) for key, role in _QUEUE_OUTPUTS.items() if outputs.get(key)
    )


def queues_from_stack(
    cloudformation: CloudFormationClient, stack_name: str
) -> tuple[QueueRef, ...] | None:
    """The queues the stack's outputs name; None when there is no such stack."""
    outputs = stack_outputs(cloudformation, stack_name)
    return None if outputs is None else queues_from_outputs(outputs)


def queue_depth(sqs: SQSClient, queue: QueueRef, oldest_age: float | None) -> QueueDepth:
    try:
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
    except sqs.exceptions.QueueDoesNotExist:
        raise UserError(f"the {queue.role} queue {queue.url} does not exist") from None
    return QueueDepth(
        queue=queue,
        visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
        in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        oldest_age_seconds=oldest_age,
    )


def sum_or_none(values: Iterable[float]) -> float | None:
    listed = list(values)
    return sum(listed) if listed else None


def totals(rows: Sequence[Row], *, per_function: bool = False) -> Totals:
    """Sums over the rows; with `per_function`, each function's own figures count once."""
    own = list({row.function: row for row in rows}.values()) if per_function else list(rows)
    by_reason: dict[str, float] = {}
    for row in own:
        for reason, value in row.parked_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0.0) + value
    event_counts: dict[str, float] = {}
    for row in rows:
        for name, value in row.event_counts.items():
            event_counts[name] = event_counts.get(name, 0.0) + value
    ages = [r.current_age_ms for r in own if r.current_age_ms is not None]
    return Totals(
        processed=sum_or_none(r.processed for r in own if r.processed is not None),
        parked=sum_or_none(r.parked for r in own if r.parked is not None),
        parked_by_reason=by_reason,
        records_per_second=sum_or_none(
            r.records_per_second for r in own if r.records_per_second is not None
        ),
        max_iterator_age_ms=max(ages) if ages else None,
        event_counts=event_counts,
    )


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")
