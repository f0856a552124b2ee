"""Iterator age, throughput, parked records and queue depths: what `streams monitor` shows.

Two sources, one snapshot shape (`MonitorSnapshot`):

- `LocalMonitor` reads what the local event source mapping records, and nothing else: its state
  table (``docs/mapping-state.md``, through `read_mappings`) and the queues' attributes. It never
  opens a reader on a shard: DynamoDB Streams allows two per shard, and the mapping needs them.
  One row per shard.
- `CloudWatchMonitor` reads a deployed function from CloudWatch (`GetMetricData`), Lambda (its
  configuration and event source mappings) and SQS. One row per function and event source:
  AWS publishes `IteratorAge` per function, without a shard dimension.

**Records/s** is the rate of records the function is done with (``RecordsProcessed`` plus
``RecordsParked``, the batch core's own counts). Locally it comes from the counters' growth
between two reads, ``(done_now - done_before) / (t_now - t_before)`` with the injected clock, so
the first read of a `LocalMonitor` has none. On AWS it is the latest minute's sum over 60 s.

`MonitorHistory` keeps samples of iterator age and throughput over time (for the sparkline and
the chart), `MonitorSampler` takes them in a thread while something else runs (the demo), and
`write_chart` draws them into a PNG (matplotlib, the ``plot`` extra, imported on use).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from streams.deadletter import REASONS
from streams.errors import UserError
from streams.local.endpoint import stack_outputs
from streams.mapping.state import EVENT_COUNT_NAMES
from streams.mapping.state.table import (
    DEFAULT_TABLE_NAME,
    MappingSnapshot,
    ShardSnapshot,
    read_mappings,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import MetricDataQueryTypeDef
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.type_defs import EventSourceMappingConfigurationTypeDef
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "DEAD_LETTER",
    "ON_FAILURE",
    "PLOT_EXTRA_HINT",
    "REASONS",
    "Breach",
    "CloudWatchMonitor",
    "LocalMonitor",
    "Monitor",
    "MonitorHistory",
    "MonitorSampler",
    "MonitorSnapshot",
    "QueueDepth",
    "QueueRef",
    "Row",
    "Sample",
    "Totals",
    "breaches",
    "queues_from_outputs",
    "queues_from_stack",
    "sparkline",
    "write_chart",
]

logger = logging.getLogger(__name__)

DEAD_LETTER: Final = "dead-letter"
ON_FAILURE: Final = "on-failure"
QueueRole = Literal["dead-letter", "on-failure"]
# The stack outputs that name the queues (template.yaml), locally as on AWS.
_QUEUE_OUTPUTS: Final[Mapping[str, QueueRole]] = {
    "DeadLetterQueueUrl": DEAD_LETTER,
    "OnFailureQueueUrl": ON_FAILURE,
}


# The batch core's counters, as the local mapping keeps them (docs/mapping-state.md).
_PROCESSED = "function:RecordsProcessed"
_PARKED = "function:RecordsParked"
_PARKED_BY_REASON = "function:RecordsParked:reason="

_PERIOD_SECONDS: Final = 60  # Lambda publishes its metrics per minute
_QUERIES_PER_CALL: Final = 500  # GetMetricData's limit
_DEFAULT_NAMESPACE = "StreamProcessor"  # as streams.batch defaults them
_DEFAULT_SERVICE = "streams"

PLOT_EXTRA_HINT = "writing a chart needs matplotlib: pip install 'streams[plot]'"
_SPARKS = "▁▂▃▄▅▆▇█"


# --- what a snapshot holds -------------------------------------------------------------------


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
            records_per_second=_sum_or_none(rates),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "takenAt": _iso(self.taken_at),
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


# --- queues ----------------------------------------------------------------------------------


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


def _queue_depth(sqs: SQSClient, queue: QueueRef, oldest_age: float | None) -> QueueDepth:
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


# --- the local mapping -----------------------------------------------------------------------


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
        queues = tuple(_queue_depth(self.sqs, queue, None) for queue in self.queues)
        return MonitorSnapshot(
            taken_at=now, source="local", rows=rows, queues=queues, totals=_totals(rows)
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
        by_reason = {
            name.removeprefix(_PARKED_BY_REASON): value
            for name, value in counts.items()
            if name.startswith(_PARKED_BY_REASON)
        }
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
            event_counts={name: counts[name] for name in EVENT_COUNT_NAMES if name in counts},
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


# --- a deployed function, from CloudWatch ---------------------------------------------------


@dataclass(frozen=True)
class _Function:
    """What the function's configuration tells the monitor."""

    name: str
    namespace: str  # of its EMF metrics (POWERTOOLS_METRICS_NAMESPACE)
    service: str  # their `service` dimension (POWERTOOLS_SERVICE_NAME)
    dead_letter_queue_url: str | None


@dataclass(frozen=True)
class _Query:
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    stat: Literal["Maximum", "Sum"]


@dataclass
class _Series:
    """A metric's datapoints by period start (epoch seconds)."""

    points: dict[float, float] = field(default_factory=dict)

    def total(self) -> float:
        return sum(self.points.values())

    def latest(self) -> float | None:
        return self.points[max(self.points)] if self.points else None

    def latest_at(self) -> float | None:
        return max(self.points) if self.points else None


class CloudWatchMonitor:
    """Reads deployed functions from CloudWatch, Lambda and SQS (see the module doc).

    For each function and each of its event source mappings, over the last `window_seconds`
    in periods of a minute:

    - ``AWS/Lambda`` ``IteratorAge`` (Maximum) by ``FunctionName``: its latest minute;
    - ``AWS/Lambda`` event counts (Sum) by ``EventSourceMappingUUID``, as Lambda publishes them
      with ``MetricsConfig: {Metrics: [EventCount]}``: sums over the window;
    - the function's EMF metrics (namespace ``POWERTOOLS_METRICS_NAMESPACE``, dimension
      ``service`` = ``POWERTOOLS_SERVICE_NAME``, from its configuration): ``RecordsProcessed``
      and ``RecordsParked`` (by ``service``, and by ``service`` and ``reason``): sums;
    - the dead-letter queue (the function's ``DEAD_LETTER_QUEUE_URL``) and each mapping's
      on-failure destination: depth from SQS, ``ApproximateAgeOfOldestMessage`` (Maximum) from
      ``AWS/SQS`` by ``QueueName``.

    `queues` replaces the queues found that way. Raises `UserError` for a function that does
    not exist.
    """

    two_reads_for_rates = False

    def __init__(
        self,
        functions: Sequence[str],
        *,
        lambda_client: LambdaClient,
        cloudwatch: CloudWatchClient,
        sqs: SQSClient,
        queues: Sequence[QueueRef] | None = None,
        window_seconds: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_seconds < _PERIOD_SECONDS:
            raise ValueError(f"the window must be at least {_PERIOD_SECONDS} s")
        self.lambda_client = lambda_client
        self.cloudwatch = cloudwatch
        self.sqs = sqs
        self.window_seconds = math.ceil(window_seconds / _PERIOD_SECONDS) * _PERIOD_SECONDS
        self._queues = None if queues is None else tuple(queues)
        self._clock = clock
        self._queue_urls: dict[str, str] = {}  # by queue ARN
        self.functions = tuple(self._function(name) for name in functions)

    def _function(self, name: str) -> _Function:
        try:
            configuration = self.lambda_client.get_function_configuration(FunctionName=name)
        except self.lambda_client.exceptions.ResourceNotFoundException:
            region = self.lambda_client.meta.region_name
            raise UserError(f"no function {name} in {region}") from None
        variables = configuration.get("Environment", {}).get("Variables", {})
        return _Function(
            name=configuration.get("FunctionName", name),
            namespace=variables.get("POWERTOOLS_METRICS_NAMESPACE", _DEFAULT_NAMESPACE),
            service=variables.get("POWERTOOLS_SERVICE_NAME", _DEFAULT_SERVICE),
            dead_letter_queue_url=variables.get("DEAD_LETTER_QUEUE_URL"),
        )

    def snapshot(self) -> MonitorSnapshot:
        now = self._clock()
        mappings = {function.name: self._mappings(function.name) for function in self.functions}
        queues = self._queues if self._queues is not None else self._found_queues(mappings)
        queries: list[_Query] = []
        for function in self.functions:
            queries += _FunctionQueries.of(function).all()
            for mapping in mappings[function.name]:
                queries += _event_count_queries(mapping).values()
        queries += [_oldest_age_query(queue) for queue in queues]
        series = self._fetch(queries, now)

        rows: list[Row] = []
        ages: dict[float, dict[str, float]] = {}
        done: dict[float, float] = {}  # records processed or parked, by period, all functions
        for function in self.functions:
            own = _FunctionQueries.of(function)
            function_done = _Series(dict(series[own.processed].points))
            for at, value in series[own.parked].points.items():
                function_done.points[at] = function_done.points.get(at, 0.0) + value
            for at, value in series[own.iterator_age].points.items():
                ages.setdefault(at, {})[function.name] = value
            for at, value in function_done.points.items():
                done[at] = done.get(at, 0.0) + value
            latest_done = function_done.latest()
            figures = _FunctionFigures(
                function=function.name,
                iterator_age_ms=series[own.iterator_age].latest(),
                iterator_age_at=series[own.iterator_age].latest_at(),
                records_per_second=(None if latest_done is None else latest_done / _PERIOD_SECONDS),
                processed=series[own.processed].total(),
                parked=series[own.parked].total(),
                parked_by_reason={
                    reason: series[query].total()
                    for reason, query in own.parked_by_reason.items()
                    if series[query].points
                },
            )
            sources: list[EventSourceMappingConfigurationTypeDef | None] = [
                *mappings[function.name]
            ]
            rows += [figures.row(mapping, series) for mapping in sources or [None]]

        depths = tuple(
            _queue_depth(self.sqs, queue, series[_oldest_age_query(queue)].latest())
            for queue in queues
        )
        history = tuple(
            Sample(
                at=at,
                iterator_age_ms=ages.get(at, {}),
                records_per_second=done[at] / _PERIOD_SECONDS if at in done else None,
            )
            for at in sorted(ages.keys() | done.keys())
        )
        return MonitorSnapshot(
            taken_at=now,
            source="cloudwatch",
            rows=tuple(rows),
            queues=depths,
            totals=_totals(rows, per_function=True),
            window_seconds=self.window_seconds,
            series=history,
        )

    def _mappings(self, function: str) -> list[EventSourceMappingConfigurationTypeDef]:
        found: list[EventSourceMappingConfigurationTypeDef] = []
        paginator = self.lambda_client.get_paginator("list_event_source_mappings")
        for page in paginator.paginate(FunctionName=function):
            found += page.get("EventSourceMappings", [])
        return sorted(found, key=lambda mapping: mapping.get("EventSourceArn", ""))

    def _found_queues(
        self, mappings: Mapping[str, Sequence[EventSourceMappingConfigurationTypeDef]]
    ) -> tuple[QueueRef, ...]:
        urls: dict[str, QueueRole] = {}
        for function in self.functions:
            if function.dead_letter_queue_url:
                urls.setdefault(function.dead_letter_queue_url, DEAD_LETTER)
            for mapping in mappings[function.name]:
                destination = mapping.get("DestinationConfig", {}).get("OnFailure", {})
                arn = destination.get("Destination", "")
                if arn.startswith("arn:") and arn.split(":")[2] == "sqs":  # not SNS, not S3
                    urls.setdefault(self._queue_url(arn), ON_FAILURE)
        return tuple(QueueRef(role, url) for url, role in urls.items())

    def _queue_url(self, arn: str) -> str:
        if arn not in self._queue_urls:
            *_, account, name = arn.split(":")
            try:
                self._queue_urls[arn] = self.sqs.get_queue_url(
                    QueueName=name, QueueOwnerAWSAccountId=account
                )["QueueUrl"]
            except self.sqs.exceptions.QueueDoesNotExist:
                raise UserError(f"the on-failure destination {arn} does not exist") from None
        return self._queue_urls[arn]

    def _fetch(self, queries: Sequence[_Query], now: float) -> dict[_Query, _Series]:
        """Every query's datapoints over the window, periods aligned to the minute."""
        end = math.ceil(now / _PERIOD_SECONDS) * _PERIOD_SECONDS
        start = end - self.window_seconds
        unique = list(dict.fromkeys(queries))
        series = {query: _Series() for query in unique}
        for first in range(0, len(unique), _QUERIES_PER_CALL):
            chunk = unique[first : first + _QUERIES_PER_CALL]
            by_id = {f"q{index}": query for index, query in enumerate(chunk)}
            pages = self.cloudwatch.get_paginator("get_metric_data").paginate(
                MetricDataQueries=[_api_query(id_, query) for id_, query in by_id.items()],
                StartTime=datetime.fromtimestamp(start, tz=UTC),
                EndTime=datetime.fromtimestamp(end, tz=UTC),
                ScanBy="TimestampAscending",
            )
            for page in pages:
                for result in page.get("MetricDataResults", []):
                    points = series[by_id[result["Id"]]].points
                    for at, value in zip(
                        result.get("Timestamps", []), result.get("Values", []), strict=True
                    ):
                        points[at.timestamp()] = value
        return series


@dataclass(frozen=True)
class _FunctionQueries:
    """The function's own metrics: IteratorAge (AWS/Lambda) and its EMF counts."""

    iterator_age: _Query
    processed: _Query
    parked: _Query
    parked_by_reason: Mapping[str, _Query]

    @classmethod
    def of(cls, function: _Function) -> _FunctionQueries:
        service = (("service", function.service),)
        return cls(
            iterator_age=_Query(
                "AWS/Lambda", "IteratorAge", (("FunctionName", function.name),), "Maximum"
            ),
            processed=_Query(function.namespace, "RecordsProcessed", service, "Sum"),
            parked=_Query(function.namespace, "RecordsParked", service, "Sum"),
            parked_by_reason={
                reason: _Query(
                    function.namespace, "RecordsParked", (*service, ("reason", reason)), "Sum"
                )
                for reason in REASONS
            },
        )

    def all(self) -> list[_Query]:
        return [self.iterator_age, self.processed, self.parked, *self.parked_by_reason.values()]


def _event_count_queries(mapping: EventSourceMappingConfigurationTypeDef) -> dict[str, _Query]:
    dimensions = (("EventSourceMappingUUID", mapping.get("UUID", "")),)
    return {name: _Query("AWS/Lambda", name, dimensions, "Sum") for name in EVENT_COUNT_NAMES}


@dataclass(frozen=True)
class _FunctionFigures:
    """A function's own figures over the window, the same on each of its event sources."""

    function: str
    iterator_age_ms: float | None
    iterator_age_at: float | None
    records_per_second: float | None
    processed: float
    parked: float
    parked_by_reason: Mapping[str, float]

    def row(
        self,
        mapping: EventSourceMappingConfigurationTypeDef | None,
        series: Mapping[_Query, _Series],
    ) -> Row:
        event_counts = {}
        if mapping is not None:
            for name, query in _event_count_queries(mapping).items():
                if series[query].points:
                    event_counts[name] = series[query].total()
        return Row(
            label=self.function,
            function=self.function,
            event_source_arn=None if mapping is None else mapping.get("EventSourceArn"),
            shard_id=None,
            mapping_uuid=None if mapping is None else mapping.get("UUID"),
            mapping_state=None if mapping is None else mapping.get("State"),
            state=None,
            checkpoint=None,
            iterator_age_ms=self.iterator_age_ms,
            records_per_second=self.records_per_second,
            processed=self.processed,
            parked=self.parked,
            parked_by_reason=self.parked_by_reason,
            event_counts=event_counts,
            last_outcome=None if mapping is None else mapping.get("LastProcessingResult"),
            updated_at=self.iterator_age_at,
        )


def _oldest_age_query(queue: QueueRef) -> _Query:
    return _Query(
        "AWS/SQS", "ApproximateAgeOfOldestMessage", (("QueueName", queue.name),), "Maximum"
    )


def _api_query(id_: str, query: _Query) -> MetricDataQueryTypeDef:
    return {
        "Id": id_,
        "MetricStat": {
            "Metric": {
                "Namespace": query.namespace,
                "MetricName": query.metric,
                "Dimensions": [{"Name": name, "Value": value} for name, value in query.dimensions],
            },
            "Period": _PERIOD_SECONDS,
            "Stat": query.stat,
        },
        "ReturnData": True,
    }


# --- totals ----------------------------------------------------------------------------------


def _sum_or_none(values: Iterable[float]) -> float | None:
    listed = list(values)
    return sum(listed) if listed else None


def _totals(rows: Sequence[Row], *, per_function: bool = False) -> Totals:
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
        processed=_sum_or_none(r.processed for r in own if r.processed is not None),
        parked=_sum_or_none(r.parked for r in own if r.parked is not None),
        parked_by_reason=by_reason,
        records_per_second=_sum_or_none(
            r.records_per_second for r in own if r.records_per_second is not None
        ),
        max_iterator_age_ms=max(ages) if ages else None,
        event_counts=event_counts,
    )


# --- history, sampling and the chart ---------------------------------------------------------


class MonitorHistory:
    """Samples over time, oldest first, at most `limit` of them (the oldest go first).

    `add` keeps one sample per time: a CloudWatch snapshot brings its window's per-minute
    samples, and a later read of the same minute replaces the earlier one.
    """

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._samples: dict[float, Sample] = {}
        self._lock = threading.Lock()

    def add(self, snapshot: MonitorSnapshot) -> None:
        new = snapshot.series or (snapshot.sample(),)
        with self._lock:
            for sample in new:
                self._samples[sample.at] = sample
            while len(self._samples) > self.limit:
                del self._samples[min(self._samples)]

    @property
    def samples(self) -> tuple[Sample, ...]:
        with self._lock:
            return tuple(self._samples[at] for at in sorted(self._samples))

    def iterator_ages(self, label: str, last: int) -> list[float | None]:
        """The last `last` iterator ages of one row (None where a sample had none)."""
        return [sample.iterator_age_ms.get(label) for sample in self.samples[-last:]]


class MonitorSampler:
    """Takes a sample every `interval` seconds in a thread while entered (for the demo).

    One sample on entering and one on leaving, so even a short run has a start and an end.
    A read that fails is logged and skipped: the sampler watches, it must not stop the run.

        with MonitorSampler(monitor, interval=1.0) as sampler:
            ...  # run the mapping
        write_chart(sampler.history.samples, "monitor.png")
    """

    def __init__(
        self, monitor: Monitor, *, interval: float = 1.0, history: MonitorHistory | None = None
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.monitor = monitor
        self.interval = interval
        self.history = history if history is not None else MonitorHistory()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-sampler", daemon=True)

    def sample(self) -> None:
        try:
            self.history.add(self.monitor.snapshot())
        except (BotoCoreError, ClientError, UserError) as error:
            logger.warning("monitor: no sample this time (%s)", error)

    def __enter__(self) -> MonitorSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.sample()


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, from ▁ (zero) to █ (the largest); a blank where None."""
    known = [value for value in values if value is not None]
    top = max(known, default=0.0)
    marks = []
    for value in values:
        if value is None:
            marks.append(" ")
        elif top <= 0:
            marks.append(_SPARKS[0])
        else:
            marks.append(_SPARKS[min(len(_SPARKS) - 1, int(value / top * len(_SPARKS)))])
    return "".join(marks)


def write_chart(
    samples: Sequence[Sample],
    path: str | Path,
    *,
    title: str = "Iterator age and throughput",
) -> Path:
    """A PNG of iterator age (seconds, one line per shard or function) and records/s over time.

    Needs matplotlib (the ``plot`` extra): `UserError` with the install line without it.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise UserError(PLOT_EXTRA_HINT) from None
    target = Path(path)
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    age_axes, rate_axes = figure.subplots(2, 1, sharex=True)
    figure.suptitle(title)
    times = [sample.at for sample in samples]  # epoch seconds; ticks show the UTC time
    labels = sorted({label for sample in samples for label in sample.iterator_age_ms})
    for label in labels:
        points = [
            (when, sample.iterator_age_ms[label] / 1000)
            for when, sample in zip(times, samples, strict=True)
            if label in sample.iterator_age_ms
        ]
        age_axes.plot(
            [when for when, _ in points], [age for _, age in points], marker=".", label=label
        )
    rates = [
        (when, sample.records_per_second)
        for when, sample in zip(times, samples, strict=True)
        if sample.records_per_second is not None
    ]
    rate_axes.plot(
        [when for when, _ in rates],
        [rate for _, rate in rates],
        marker=".",
        color="tab:green",
        label="records/s (processed + parked)",
    )
    age_axes.set_ylabel("iterator age (s)")
    age_axes.set_title("How far behind: age of the last record sent to the function")
    rate_axes.set_ylabel("records/s")
    day = f", {datetime.fromtimestamp(times[0], tz=UTC):%Y-%m-%d}" if times else ""
    rate_axes.set_xlabel(f"time (UTC{day})")
    rate_axes.set_title("Throughput: records done per second")
    for axes, has_data in ((age_axes, bool(labels)), (rate_axes, bool(rates))):
        axes.grid(visible=True, alpha=0.3)
        axes.set_ylim(bottom=0)
        if has_data:
            axes.legend(loc="best", fontsize="small")
        else:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center")
    if times:
        rate_axes.xaxis.set_major_formatter(
            FuncFormatter(lambda at, _: datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S"))
        )
    else:
        rate_axes.set_xticks([])  # no time to show
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    return target


# --- text ------------------------------------------------------------------------------------


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")
