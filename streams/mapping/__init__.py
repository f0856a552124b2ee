"""The local event source mapping: a stream's records to a function, with Lambda's rules.

    settings = MappingSettings.from_properties(spec.properties, spec.event_source)
    mapping = EventSourceMapping(settings, source, invoker, function_arn=arn,
                                 checkpoints=store, observer=observer)
    mapping.run()

The seams: a `ShardSource` (`streams.sources`), an `Invoker` (the function), a
`CheckpointStore` and a `MappingObserver` (`streams.mapping.state`). docs/esm.md says which of
Lambda's rules the mapping follows; docs/mapping.md how each is implemented.
"""

from __future__ import annotations

from streams.mapping.delivery import DEFAULT_RETRY_BACKOFF
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
    Invocation,
    Invoker,
    InvokeResult,
    LambdaContext,
    NotInvoked,
)
from streams.mapping.settings import MappingSettings
from streams.mapping.state import (
    CheckpointStore,
    MappingObserver,
    MemoryCheckpointStore,
    MetricCounters,
    MetricName,
    Observers,
    OnInvocation,
    ShardState,
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
    "MappingObserver",
    "MappingSettings",
    "MemoryCheckpointStore",
    "MetricCounters",
    "MetricName",
    "NotInvoked",
    "Observers",
    "OnFailureRecord",
    "OnInvocation",
    "RecordFilter",
    "ResponseContext",
    "ShardState",
    "on_failure_record",
    "open_destination",
]
