"""The local event source mapping: a stream's records to a function, with Lambda's rules.

    settings = MappingSettings.from_properties(spec.properties, spec.event_source)
    mapping = EventSourceMapping(settings, source, invoker, function_arn=arn,
                                 checkpoints=store, metrics=sink)
    mapping.run()

The seams: a `ShardSource` (`streams.sources`), an `Invoker` (the function), a
`CheckpointStore` and a `MetricsSink`. See docs/mapping.md for how each rule is implemented.
"""

from __future__ import annotations

from streams.mapping.delivery import DEFAULT_RETRY_BACKOFF, Invocation
from streams.mapping.destinations import (
    Destination,
    OnFailureRecord,
    ResponseContext,
    on_failure_record,
    open_destination,
)
from streams.mapping.engine import DEFAULT_RETENTION_SECONDS, EventSourceMapping
from streams.mapping.filters import FilterPattern, RecordFilter
from streams.mapping.invoke import (
    FunctionError,
    InProcessInvoker,
    Invoker,
    InvokeResult,
    LambdaContext,
    NotInvoked,
)
from streams.mapping.settings import MappingSettings
from streams.mapping.state import (
    CheckpointStore,
    MemoryCheckpointStore,
    MetricCounters,
    MetricName,
    MetricsSink,
)

__all__ = [
    "DEFAULT_RETENTION_SECONDS",
    "DEFAULT_RETRY_BACKOFF",
    "CheckpointStore",
    "Destination",
    "EventSourceMapping",
    "FilterPattern",
    "FunctionError",
    "InProcessInvoker",
    "Invocation",
    "InvokeResult",
    "Invoker",
    "LambdaContext",
    "MappingSettings",
    "MemoryCheckpointStore",
    "MetricCounters",
    "MetricName",
    "MetricsSink",
    "NotInvoked",
    "OnFailureRecord",
    "RecordFilter",
    "ResponseContext",
    "on_failure_record",
    "open_destination",
]
