"""A deployed function's monitor: CloudWatch (`GetMetricData`), Lambda and SQS.

One row per function and event source: AWS publishes `IteratorAge` per function, without a shard
dimension. Records/s is the latest minute's sum over 60 s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from streams.arn import Arn
from streams.deadletter import REASONS
from streams.errors import UserError
from streams.metrics import DEFAULT_NAMESPACE, DEFAULT_SERVICE, EVENT_COUNT_NAMES
from streams.monitor.model import (
    DEAD_LETTER,
    ON_FAILURE,
    MonitorSnapshot,
    QueueRef,
    QueueRole,
    Row,
    Sample,
    queue_depth,
    totals,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import MetricDataQueryTypeDef
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.type_defs import EventSourceMappingConfigurationTypeDef
    from mypy_boto3_sqs import SQSClient

__all__ = ["CloudWatchMonitor"]

_PERIOD_SECONDS: Final = 60  # Lambda publishes its metrics per minute

_QUERIES_PER_CALL: Final = 500  # GetMetricData's limit


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
            namespace=variables.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE),
            service=variables.get("POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE),
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
            queue_depth(self.sqs, queue, series[_oldest_age_query(queue)].latest())
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
            totals=totals(rows, per_function=True),
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
                parsed = Arn.of(arn)
                if parsed is not None and parsed.is_queue:  # not SNS, not S3
                    urls.setdefault(self._queue_url(arn), ON_FAILURE)
        return tuple(QueueRef(role, url) for url, role in urls.items())

    def _queue_url(self, arn: str) -> str:
        if arn not in self._queue_urls:
            parsed = Arn.parse(arn)
            try:
                self._queue_urls[arn] = self.sqs.get_queue_url(
                    QueueName=parsed.name, QueueOwnerAWSAccountId=parsed.account
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
