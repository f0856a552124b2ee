"""The function's metrics, read back from the embedded metric format documents it prints."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from streams.metrics import function_count_name

__all__ = ["EmfMetric", "emf_metrics", "function_counts", "is_emf"]


@dataclass(frozen=True)
class EmfMetric:
    """One metric of an embedded-metric-format document the function printed."""

    namespace: str
    name: str
    unit: str | None
    values: tuple[float, ...]
    dimensions: Mapping[str, str]


def is_emf(document: object) -> bool:
    aws = document.get("_aws") if isinstance(document, dict) else None
    return isinstance(aws, dict) and isinstance(aws.get("CloudWatchMetrics"), list)


def emf_metrics(document: Mapping[str, Any]) -> Iterator[EmfMetric]:
    for directive in document["_aws"]["CloudWatchMetrics"]:
        if not isinstance(directive, dict):
            continue
        names = {
            name
            for dimension_set in directive.get("Dimensions", [])
            if isinstance(dimension_set, list)
            for name in dimension_set
            if isinstance(name, str) and name in document
        }
        dimensions = {name: str(document[name]) for name in sorted(names)}
        for definition in directive.get("Metrics", []):
            name = definition.get("Name") if isinstance(definition, dict) else None
            if not isinstance(name, str) or name not in document:
                continue
            raw = document[name]
            values = raw if isinstance(raw, list) else [raw]
            yield EmfMetric(
                namespace=str(directive.get("Namespace", "")),
                name=name,
                unit=definition.get("Unit"),
                values=tuple(float(v) for v in values if isinstance(v, int | float)),
                dimensions=dimensions,
            )


def function_counts(metrics: Iterable[EmfMetric]) -> dict[str, float]:
    """The function's own counters from its EMF metrics (unit ``Count``), named for the state
    table by `streams.metrics.function_count_name`."""
    counts: dict[str, float] = {}
    for metric in metrics:
        if metric.unit != "Count":
            continue
        name = function_count_name(metric.name, metric.dimensions)
        counts[name] = counts.get(name, 0.0) + sum(metric.values)
    return counts
