"""Metric names in one place: for the function, the local mapping, its state table, the monitor.

Two sets of metrics describe a stream's processing:

- the **function's** own, published by the batch core (Powertools, embedded metric format) once
  per invocation: `FUNCTION_METRICS`, in the namespace `POWERTOOLS_METRICS_NAMESPACE` (default
  `DEFAULT_NAMESPACE`) with the dimension `service`, and `RecordsParked` once more per reason
  with the dimension `reason`;
- the **event source mapping's** (docs/esm.md section 8): `IteratorAge` and the event counts, which
  AWS publishes in `AWS/Lambda` and the local mapping keeps per shard.

Locally, the mapping reads the function's EMF documents from its output and keeps its counts in
the state table beside its own, each under the name `function_count_name` gives it
(``function:RecordsParked:reason=poison``); the monitor reads them back with
`parse_function_count`. The names here are the only place that contract is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVICE",
    "EVENT_COUNT_METRICS",
    "EVENT_COUNT_NAMES",
    "FUNCTION_METRICS",
    "MAPPING_COUNT_NAMES",
    "EventCountName",
    "FunctionMetricName",
    "MappingCountName",
    "MetricName",
    "function_count_name",
    "parse_function_count",
]

#: The function's metrics, as `StreamProcessor` defaults them.
DEFAULT_NAMESPACE: Final = "StreamProcessor"
DEFAULT_SERVICE: Final = "streams"

FunctionMetricName = Literal[
    "RecordsProcessed",
    "RecordsParked",
    "TransientRetries",
    "EarlyCheckpoints",
    "RecordsDeliveredAgain",
    "IteratorAge",
]
FUNCTION_METRICS: Final[tuple[FunctionMetricName, ...]] = get_args(FunctionMetricName)

# The event counts of docs/esm.md section 8, in its order: emitted only with
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
#: Counts of our own, beside AWS's: `ExpiredRanges`, the times a shard's position had left the
#: stream (past its retention) when the mapping read it, so that it went on at the oldest record
#: still there. How many records each range held cannot be known (sequence numbers have gaps).
MappingCountName = Literal["ExpiredRanges"]
MAPPING_COUNT_NAMES: Final[tuple[MappingCountName, ...]] = get_args(MappingCountName)
#: The mapping's metrics: `IteratorAge`, the event counts and its own counts.
MetricName = Literal["IteratorAge"] | EventCountName | MappingCountName

EVENT_COUNT_NAMES: Final[tuple[EventCountName, ...]] = get_args(EventCountName)
EVENT_COUNT_METRICS: Final[frozenset[MetricName]] = frozenset(EVENT_COUNT_NAMES)

_FUNCTION_PREFIX: Final = "function:"


def function_count_name(metric: str, dimensions: Mapping[str, str]) -> str:
    """The name the state table keeps one of the function's counts under.

    ``function:<Metric>`` for a metric published with no dimension beyond ``service``;
    ``function:<Metric>:<dimension>=<value>`` for each further dimension, in name order, e.g.
    ``function:RecordsParked:reason=poison``.
    """
    extra = sorted((name, value) for name, value in dimensions.items() if name != "service")
    return _FUNCTION_PREFIX + metric + "".join(f":{name}={value}" for name, value in extra)


def parse_function_count(name: str) -> tuple[str, dict[str, str]] | None:
    """The metric and dimensions of a name `function_count_name` made; None for other names
    (the mapping's own counts)."""
    if not name.startswith(_FUNCTION_PREFIX):
        return None
    metric, *pairs = name.removeprefix(_FUNCTION_PREFIX).split(":")
    dimensions = dict(pair.partition("=")[::2] for pair in pairs)
    return metric, dimensions
