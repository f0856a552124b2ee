"""The event source mapping's settings, read from its CloudFormation/SAM properties (section 1).

`MappingSettings.from_properties` takes the `AWS::Lambda::EventSourceMapping` properties as the
SAM translator writes them (the names of CloudFormation and of the Lambda API), applies AWS's
defaults and refuses what AWS would refuse, with one line naming the property. CloudFormation's
own coercions are accepted (`"100"` for 100, `"true"` for true).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from streams.arn import Arn
from streams.errors import UserError
from streams.mapping.filters import FilterPattern, InvalidFilterPattern
from streams.sources.base import EventSource

__all__ = [
    "MAX_FILTERS",
    "SHARED_PROPERTIES",
    "STREAM_ONLY_PROPERTIES",
    "MappingSettings",
    "StartingPosition",
]

StartingPosition = Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"]

# Lambda's default quota of filters per event source mapping.
MAX_FILTERS: Final = 5
DESTINATION_SERVICES: Final = ("sqs", "sns", "s3")
# Properties that change nothing in how records are read and delivered here: the mapping's
# identity (the source is given to the engine, the function to the invoker), its tags, and the
# key that encrypts the filter criteria at rest on AWS.
_NOT_USED_LOCALLY: Final = frozenset({"EventSourceArn", "FunctionName", "Tags", "KmsKeyArn"})
# Properties of other event sources (SQS, Kafka, MQ, DocumentDB): AWS refuses them for streams.
_OTHER_SOURCES: Final = frozenset(
    {
        "Queues",
        "Topics",
        "SourceAccessConfigurations",
        "SelfManagedEventSource",
        "SelfManagedKafkaEventSourceConfig",
        "AmazonManagedKafkaEventSourceConfig",
        "ScalingConfig",
        "DocumentDBEventSourceConfig",
        "ProvisionedPollerConfig",
    }
)


def refuse(name: str, problem: str) -> UserError:
    return UserError(f"event source mapping property {name}: {problem}")


def read_integer(properties: Mapping[str, Any], name: str, default: int) -> int:
    value = properties.get(name, default)
    if isinstance(value, bool):
        raise refuse(name, f"expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise refuse(name, f"expected a whole number, got {value!r}")


def read_boolean(properties: Mapping[str, Any], name: str, default: bool) -> bool:
    value = properties.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise refuse(name, f"expected true or false, got {value!r}")


def _object(properties: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = properties.get(name) or {}
    if not isinstance(value, Mapping):
        raise refuse(name, f"expected an object, got {value!r}")
    return value


def _list(value: object, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise refuse(name, f"expected a list, got {value!r}")
    return value


def _on_failure_destination(properties: Mapping[str, Any]) -> str | None:
    config = _object(properties, "DestinationConfig")
    for key in config:
        if key != "OnFailure":
            raise refuse(
                f"DestinationConfig.{key}",
                "stream event sources only have an OnFailure destination",
            )
    on_failure = config.get("OnFailure") or {}
    if not isinstance(on_failure, Mapping):
        raise refuse("DestinationConfig.OnFailure", f"expected an object, got {on_failure!r}")
    for key in on_failure:
        if key != "Destination":
            raise refuse(f"DestinationConfig.OnFailure.{key}", "unknown property")
    destination = on_failure.get("Destination")
    if destination is None:
        return None
    if not isinstance(destination, str):
        raise refuse("DestinationConfig.OnFailure.Destination", f"not an ARN: {destination!r}")
    return destination


def _filters(properties: Mapping[str, Any]) -> tuple[FilterPattern, ...]:
    criteria = _object(properties, "FilterCriteria")
    for key in criteria:
        if key != "Filters":
            raise refuse(f"FilterCriteria.{key}", "unknown property")
    filters = _list(criteria.get("Filters"), "FilterCriteria.Filters")
    if len(filters) > MAX_FILTERS:
        raise refuse(
            "FilterCriteria.Filters",
            f"{len(filters)} filters, more than Lambda's quota of {MAX_FILTERS} per mapping",
        )
    patterns: list[FilterPattern] = []
    for index, item in enumerate(filters):
        name = f"FilterCriteria.Filters[{index}].Pattern"
        if not isinstance(item, Mapping) or not isinstance(item.get("Pattern"), str):
            raise refuse(name, "expected a filter pattern as a JSON string")
        try:
            patterns.append(FilterPattern(item["Pattern"]))
        except InvalidFilterPattern as error:
            raise refuse(name, str(error)) from None
    return tuple(patterns)


def read_response_types(properties: Mapping[str, Any]) -> bool:
    types = _list(properties.get("FunctionResponseTypes"), "FunctionResponseTypes")
    for value in types:
        if value != "ReportBatchItemFailures":
            raise refuse(
                "FunctionResponseTypes",
                f"{value!r} is not a response type (ReportBatchItemFailures)",
            )
    return bool(types)


def _event_count_metrics(properties: Mapping[str, Any]) -> bool:
    config = _object(properties, "MetricsConfig")
    for key in config:
        if key != "Metrics":
            raise refuse(f"MetricsConfig.{key}", "unknown property")
    metrics = _list(config.get("Metrics"), "MetricsConfig.Metrics")
    for value in metrics:
        if value != "EventCount":
            raise refuse(
                "MetricsConfig.Metrics", f"{value!r} is not supported here (only EventCount)"
            )
    return bool(metrics)


@dataclass(frozen=True)
class MappingSettings:
    """One stream event source mapping's settings, validated as AWS validates them.

    Field names are the AWS property names in snake case; times are in seconds.
    `on_failure_destination` is the ARN of `DestinationConfig.OnFailure.Destination`;
    `report_batch_item_failures` is `FunctionResponseTypes: [ReportBatchItemFailures]`;
    `event_count_metrics` is `MetricsConfig: {Metrics: [EventCount]}`.
    """

    event_source: EventSource
    starting_position: StartingPosition
    starting_position_timestamp: float | None = None
    batch_size: int = 100
    maximum_batching_window_in_seconds: int = 0
    bisect_batch_on_function_error: bool = False
    maximum_retry_attempts: int = -1
    maximum_record_age_in_seconds: int = -1
    on_failure_destination: str | None = None
    parallelization_factor: int = 1
    tumbling_window_in_seconds: int = 0
    filters: tuple[FilterPattern, ...] = field(default=())
    report_batch_item_failures: bool = False
    enabled: bool = True
    event_count_metrics: bool = False

    def __post_init__(self) -> None:
        self._check_position()
        self._check_range("BatchSize", self.batch_size, 1, 10_000)
        self._check_range(
            "MaximumBatchingWindowInSeconds", self.maximum_batching_window_in_seconds, 0, 300
        )
        self._check_range("MaximumRetryAttempts", self.maximum_retry_attempts, -1, 10_000)
        age = self.maximum_record_age_in_seconds
        if age != -1 and not 60 <= age <= 604_800:
            raise refuse(
                "MaximumRecordAgeInSeconds", f"must be -1 or between 60 and 604800, got {age}"
            )
        self._check_range("ParallelizationFactor", self.parallelization_factor, 1, 10)
        self._check_range("TumblingWindowInSeconds", self.tumbling_window_in_seconds, 0, 900)
        if len(self.filters) > MAX_FILTERS:
            raise refuse("FilterCriteria.Filters", f"more than {MAX_FILTERS} filters")
        if self.on_failure_destination is not None:
            self._check_destination(self.on_failure_destination)

    def _check_position(self) -> None:
        allowed: tuple[str, ...] = ("TRIM_HORIZON", "LATEST")
        if self.event_source == "aws:kinesis":
            allowed = (*allowed, "AT_TIMESTAMP")
        if self.starting_position not in allowed:
            raise refuse(
                "StartingPosition",
                f"{self.starting_position!r} is not valid for {self.event_source} "
                f"(use {' or '.join(allowed)})",
            )
        at_timestamp = self.starting_position == "AT_TIMESTAMP"
        if at_timestamp and self.starting_position_timestamp is None:
            raise refuse("StartingPositionTimestamp", "required with AT_TIMESTAMP")
        if not at_timestamp and self.starting_position_timestamp is not None:
            raise refuse("StartingPositionTimestamp", "only valid with AT_TIMESTAMP")

    @staticmethod
    def _check_range(name: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            raise refuse(name, f"must be between {low} and {high}, got {value}")

    @staticmethod
    def _check_destination(arn: str) -> None:
        parsed = Arn.of(arn)
        service = parsed.service if parsed is not None else None
        if service not in DESTINATION_SERVICES:
            raise refuse(
                "DestinationConfig.OnFailure.Destination",
                f"{arn!r} is not the ARN of an SQS queue, an SNS topic or an S3 bucket",
            )

    @classmethod
    def from_properties(
        cls, properties: Mapping[str, Any], event_source: EventSource
    ) -> MappingSettings:
        """Settings from `AWS::Lambda::EventSourceMapping` properties; refuses bad values.

        Raises `UserError` naming the first property AWS would refuse.
        """
        for name in properties:
            if name in _OTHER_SOURCES:
                raise refuse(name, f"not valid for {event_source} event sources")
        known = {*_NOT_USED_LOCALLY, *_PROPERTY_NAMES}
        for name in properties:
            if name not in known:
                raise refuse(name, "unknown property")
        position = properties.get("StartingPosition")
        if position is None:
            raise refuse("StartingPosition", "required for a stream event source")
        timestamp = properties.get("StartingPositionTimestamp")
        if timestamp is not None and (isinstance(timestamp, bool) or not _numeric(timestamp)):
            raise refuse("StartingPositionTimestamp", f"expected Unix seconds, got {timestamp!r}")
        return cls(
            event_source=event_source,
            starting_position=str(position),  # type: ignore[arg-type]  # checked in __post_init__
            starting_position_timestamp=None if timestamp is None else float(timestamp),
            batch_size=read_integer(properties, "BatchSize", 100),
            maximum_batching_window_in_seconds=read_integer(
                properties, "MaximumBatchingWindowInSeconds", 0
            ),
            bisect_batch_on_function_error=read_boolean(
                properties, "BisectBatchOnFunctionError", False
            ),
            maximum_retry_attempts=read_integer(properties, "MaximumRetryAttempts", -1),
            maximum_record_age_in_seconds=read_integer(properties, "MaximumRecordAgeInSeconds", -1),
            on_failure_destination=_on_failure_destination(properties),
            parallelization_factor=read_integer(properties, "ParallelizationFactor", 1),
            tumbling_window_in_seconds=read_integer(properties, "TumblingWindowInSeconds", 0),
            filters=_filters(properties),
            report_batch_item_failures=read_response_types(properties),
            enabled=read_boolean(properties, "Enabled", True),
            event_count_metrics=_event_count_metrics(properties),
        )


def _numeric(value: object) -> bool:
    if isinstance(value, int | float | str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


#: The properties only stream event sources have: AWS refuses them for a queue.
STREAM_ONLY_PROPERTIES: Final = frozenset(
    {
        "StartingPosition",
        "StartingPositionTimestamp",
        "BisectBatchOnFunctionError",
        "MaximumRetryAttempts",
        "MaximumRecordAgeInSeconds",
        "DestinationConfig",
        "ParallelizationFactor",
        "TumblingWindowInSeconds",
    }
)
#: The properties every event source mapping of a stream or a queue has.
SHARED_PROPERTIES: Final = frozenset(
    {"BatchSize", "MaximumBatchingWindowInSeconds", "FunctionResponseTypes", "Enabled"}
)
_PROPERTY_NAMES: Final = (
    STREAM_ONLY_PROPERTIES | SHARED_PROPERTIES | {"FilterCriteria", "MetricsConfig"}
)
