"""`streams run` as a library: a template's function, fed by its streams, with Lambda's rules.

```python
stack = deploy_template("template.yaml", endpoint_url=endpoint.url)
mapping = LocalMapping(stack, "ProcessorFunction")
mapping.run(exit_when_idle=5)      # blocks; `mapping.stop()` from another thread ends it
```

`LocalMapping` glues the parts of `streams.mapping` together for one function of a deployed
stack. For each of its DynamoDB and Kinesis event sources it runs an `EventSourceMapping` in its
own thread, and for each of its SQS event sources a `QueuePoller` (`streams.mapping.sqs`: one
poller, Lambda's batching and deletion rules, no state table: the queue keeps what is not
done). Other sources are not run, and are listed in `skipped`. A stream mapping gets:

- the settings of the template (`MappingSettings.from_properties`: a bad value is refused with
  one line naming the property, before anything starts);
- the stream's shard source, its clients on the stack's endpoint;
- the function in worker processes: its `CodeUri`, `Handler`, `Runtime`, `Timeout`,
  `MemorySize` and resolved `Environment.Variables`, plus the endpoint (`AWS_ENDPOINT_URL`) and
  the local endpoint's credentials, so that the function talks to the same endpoint;
- the state table (`DynamoDBCheckpointStore`): the lease (a second mapping of the same function
  and stream waits, saying so; a holder that died on this machine is taken over at once),
  its heartbeat, checkpoints, and per-shard metrics: the engine's iterator age and event counts,
  and from here each shard's state (`open`, `closed`, `finished`), the last batch's outcome and
  the function's own EMF counts (`function:RecordsProcessed`, ...), so that `streams monitor`
  needs the state table only (docs/mapping-state.md).

A queue's poller shares the function's workers, and is refused when it starts, as
CreateEventSourceMapping refuses it, for a queue whose visibility timeout is shorter than the
function's `Timeout`.

`stop()` (or Ctrl-C in `run`): the batches in flight finish and checkpoint, the leases are
released and the workers stopped; what was not done is delivered again by the next run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from streams.arn import Arn
from streams.backoff import Backoff
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.local.endpoint import local_session
from streams.local.stack import DeployedStack
from streams.local.template import (
    MAPPING_TYPE,
    EventSourceSpec,
    QueueSourceSpec,
    SkippedPart,
    TemplateFunction,
)
from streams.mapping import (
    DEFAULT_RETENTION_SECONDS,
    DEFAULT_RETRY_BACKOFF,
    EventSourceMapping,
    Invocation,
    MappingSettings,
)
from streams.mapping.function.interpreter import resolve_interpreter
from streams.mapping.function.pool import WorkerPool
from streams.mapping.function.spec import FunctionSpec
from streams.mapping.sqs import QueuePoller, QueueSettings, check_queue, describe_queue
from streams.mapping.state import Observers, OnInvocation
from streams.mapping.state.layout import DEFAULT_TABLE_NAME, MappingId
from streams.mapping.state.lease import LeaseLost
from streams.mapping.state.table import DynamoDBCheckpointStore
from streams.sources import DynamoDBStreamSource, KinesisStreamSource
from streams.sources.base import ShardSource

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = ["LocalMapping", "QueueMapping", "StreamMapping"]

logger = logging.getLogger("streams.run")

# Threads of one mapping share the clients: room for every shard's poller and lanes.
_CLIENT_CONFIG: Final = Config(retries={"mode": "standard"}, max_pool_connections=50)


@dataclass(frozen=True)
class StreamMapping:
    """One stream event source of a function (its logical id), with its validated settings."""

    function: str
    spec: EventSourceSpec
    settings: MappingSettings

    @property
    def mapping_id(self) -> MappingId:
        return MappingId(self.function, self.spec.event_source_arn)


@dataclass(frozen=True)
class QueueMapping:
    """One SQS event source of a function (its logical id), with its validated settings."""

    function: str
    spec: QueueSourceSpec
    settings: QueueSettings


class LocalMapping:
    """Runs every stream and queue event source of one function of `stack` (see the module
    docstring).

    - `function_id`: the function's logical id; needed when the template has several stream
      functions, and for a function fed by queues only.
    - `region`: default the stack's.
    - `clock` (epoch seconds) and `sleep` go to the engine, the state table and the queue
      pollers: record ages, batching windows, retry pauses, lease expiries and a queue's
      idleness follow them. `backoff` is the pause before retrying a failed batch of a stream
      (default Lambda-like: `min(2**n, 60)` seconds; a queue's failed messages come back after
      its visibility timeout instead).
    - `lease_seconds`: how long a lease lasts without a heartbeat (renewed every third of it).
    - `on_invocation` is called after each invocation, from the shard's (or queue's) thread
      (progress, logs); for a queue, `Invocation.shard_id` is the queue's ARN.
    - `state_table`: the state table's name in the endpoint.
    - `session`: the boto3 session every client of the mapping is made from (default a
      `local_session`); `environment`: variables added to the function's own, in its worker
      processes. Both are seams for tests and `streams demo --faults` (fault injection on the
      mapping's calls, and in the function's workers).

    Raises `UserError` (one line) for what the user can fix: no such function, a function with no
    stream or queue event source, a setting AWS would refuse, code that is not on this machine.
    """

    def __init__(
        self,
        stack: DeployedStack,
        function_id: str | None = None,
        *,
        region: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff = DEFAULT_RETRY_BACKOFF,
        lease_seconds: float = 30.0,
        on_invocation: Callable[[Invocation], None] | None = None,
        state_table: str = DEFAULT_TABLE_NAME,
        session: boto3.Session | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        function = stack.function(function_id)
        self.endpoint_url = stack.endpoint_url
        self.region = region or stack.region
        self.function = function
        #: The stack's event sources that `streams run` cannot run (Kafka, MQ, ...), and why.
        self.skipped = _not_run(stack)
        source_arns = [spec.event_source_arn for spec in function.event_sources] + [
            spec.queue_arn for spec in function.queue_sources
        ]
        if not source_arns:
            raise UserError(
                f"function {function.logical_id} has no DynamoDB or Kinesis stream or SQS queue "
                "event source: only those are run locally"
            )
        self.streams = tuple(
            StreamMapping(function.logical_id, spec, _settings(spec))
            for spec in function.event_sources
        )
        self.queues = tuple(
            QueueMapping(function.logical_id, spec, _queue_settings(spec))
            for spec in function.queue_sources
        )
        self._session = session if session is not None else local_session(self.region)
        self.function_spec = _worker_spec(
            function,
            region=self.region,
            account_id=Arn.parse(source_arns[0]).account,
            endpoint_url=self.endpoint_url,
            credentials=_credentials(self._session),
            environment=environment or {},
        )
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff
        self._lease_seconds = lease_seconds
        self._observers = () if on_invocation is None else (OnInvocation(on_invocation),)
        #: The state table's name in the endpoint (checkpoints, metrics, backfill positions).
        self.state_table = state_table
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._runs: list[_Run] = []
        self._ran = False

    def stop(self) -> None:
        """Stop (thread-safe): batches in flight finish and checkpoint, then `run` returns."""
        self._stopping.set()
        with self._lock:
            runs = list(self._runs)
        for run in runs:
            run.stop()

    def run(self, *, exit_when_idle: float | None = None) -> None:
        """Run the function's stream and queue mappings until `stop()`, Ctrl-C, or an error.

        With `exit_when_idle`, return once every stream has had no record to deliver and
        nothing in flight, and every queue no message, for that many seconds. An error of a
        mapping (a stream or queue that cannot be read, the state table, a lease another
        mapping took over: `LeaseLost`) stops the others and is raised here, once their batches
        in flight are done. A queue the function cannot be mapped to raises `UserError` before
        anything is read.
        """
        with self._lock:
            if self._ran:
                raise RuntimeError("a LocalMapping runs once: make a new one to run again")
            self._ran = True
        if self._stopping.is_set():
            return
        workers = WorkerPool(
            self.function_spec,
            resolve_interpreter(self.function_spec.runtime, self.function_spec.code_uri),
        )
        done: queue.Queue[_Run] = queue.Queue()
        threads: list[threading.Thread] = []
        try:
            # Clients are made here: a boto3 session is not thread-safe.
            dynamodb: DynamoDBClient = self._session.client(
                "dynamodb",
                endpoint_url=service_endpoint("dynamodb", self.endpoint_url),
                config=_CLIENT_CONFIG,
            )
            runs: list[_Run] = [
                *(self._prepare(stream, workers, dynamodb, done) for stream in self.streams),
                *(self._prepare_queue(mapping, workers, done) for mapping in self.queues),
            ]
            with self._lock:
                self._runs = runs
            threads = [
                threading.Thread(
                    target=run.run,
                    args=(exit_when_idle,),
                    name=f"mapping-{run.name}",
                    daemon=True,
                )
                for run in runs
            ]
            for thread in threads:
                thread.start()
            for _ in threads:
                if done.get().error is not None:
                    self.stop()
        except KeyboardInterrupt:
            logger.info("stopping: batches in flight finish and checkpoint")
            raise
        finally:
            self.stop()
            for thread in threads:
                thread.join()
            workers.close()
        for run in runs:
            if run.error is not None:
                raise run.error

    def _prepare(
        self,
        stream: StreamMapping,
        workers: WorkerPool,
        dynamodb: DynamoDBClient,
        done: queue.Queue[_Run],
    ) -> _StreamRun:
        """One stream's state table store and engine; nothing is read before the lease."""
        store = DynamoDBCheckpointStore(
            stream.mapping_id,
            client=dynamodb,
            table_name=self.state_table,
            lease_seconds=self._lease_seconds,
            clock=self._clock,
        )
        engine = EventSourceMapping(
            stream.settings,
            _open_source(stream.spec, self._session, self.endpoint_url),
            workers,
            function_arn=self.function_spec.arn,
            checkpoints=store,
            observer=Observers(store, *self._observers),
            session=self._session,
            endpoint_url=self.endpoint_url,
            function_timeout=self.function_spec.timeout,
            clock=self._clock,
            sleep=self._sleep,
            retention_seconds=_retention_seconds(stream.spec, self._session, self.endpoint_url),
            backoff=self._backoff,
            # Stable across runs, as AWS's mapping UUID is: it names S3 on-failure objects.
            mapping_id=str(uuid.uuid5(uuid.NAMESPACE_URL, stream.mapping_id.key)),
        )
        return _StreamRun(stream, store, engine, stopping=self._stopping, done=done)

    def _prepare_queue(
        self, mapping: QueueMapping, workers: WorkerPool, done: queue.Queue[_Run]
    ) -> _QueueRun:
        """One queue's poller, once the queue is found and suits the function."""
        arn = mapping.spec.queue_arn
        sqs = self._session.client(
            "sqs",
            region_name=Arn.parse(arn).region,
            endpoint_url=service_endpoint("sqs", self.endpoint_url),
            config=_CLIENT_CONFIG,
        )
        try:
            found = describe_queue(arn, sqs)
            check_queue(mapping.settings, found, self.function_spec.timeout)
        except UserError as error:
            raise UserError(f"{mapping.spec.logical_id}: {error}") from None
        poller = QueuePoller(
            mapping.settings,
            found,
            workers,
            sqs=sqs,
            function_timeout=self.function_spec.timeout,
            clock=self._clock,
            sleep=self._sleep,
            observer=Observers(*self._observers),
        )
        return _QueueRun(mapping, poller, done=done)


# --- building the parts -------------------------------------------------------------------


def _not_run(stack: DeployedStack) -> tuple[SkippedPart, ...]:
    # Every mapping is left out of moto's stack; the reason that counts here is the last one
    # given for it (a source that is neither a stream nor a queue, a function that cannot run
    # locally).
    runnable = {
        logical_id
        for spec in stack.functions.values()
        for logical_id in (
            *(source.logical_id for source in spec.event_sources),
            *(source.logical_id for source in spec.queue_sources),
        )
    }
    reasons = {part.name: part for part in stack.skipped if part.kind == MAPPING_TYPE}
    return tuple(part for name, part in reasons.items() if name not in runnable)


def _settings(spec: EventSourceSpec) -> MappingSettings:
    try:
        return MappingSettings.from_properties(spec.properties, spec.event_source)
    except UserError as error:
        raise UserError(f"{spec.logical_id}: {error}") from None


def _queue_settings(spec: QueueSourceSpec) -> QueueSettings:
    try:
        return QueueSettings.from_properties(spec.properties)
    except UserError as error:
        raise UserError(f"{spec.logical_id}: {error}") from None


def _credentials(session: boto3.Session) -> dict[str, str]:
    """The session's credentials as the variables a function reads them from."""
    found = session.get_credentials()
    if found is None:  # local_session always has moto's test credentials
        raise RuntimeError("the local session has no credentials")
    frozen = found.get_frozen_credentials()
    variables = {
        "AWS_ACCESS_KEY_ID": str(frozen.access_key),
        "AWS_SECRET_ACCESS_KEY": str(frozen.secret_key),
    }
    if frozen.token:
        variables["AWS_SESSION_TOKEN"] = frozen.token
    return variables


def _worker_spec(
    function: TemplateFunction,
    *,
    region: str,
    account_id: str,
    endpoint_url: str,
    credentials: Mapping[str, str],
    environment: Mapping[str, str],
) -> FunctionSpec:
    if function.code_uri is None:
        raise UserError(
            f"function {function.logical_id}: its CodeUri is not a directory on this machine "
            "(an S3 location or inline code): streams run needs the function's code here"
        )
    try:
        return FunctionSpec(
            name=function.function_name or function.logical_id,
            code_uri=function.code_uri,
            handler=function.handler,
            runtime=function.runtime,
            timeout=function.timeout,
            memory_size=function.memory_size,
            # The function talks to the endpoint the mapping reads from, never to AWS.
            environment={
                **function.environment,
                **environment,
                "AWS_ENDPOINT_URL": endpoint_url,
            },
            region=region,
            account_id=account_id,
            credentials=credentials,
        )
    except ValueError as error:
        raise UserError(f"function {function.logical_id}: {error}") from None


def _open_source(spec: EventSourceSpec, session: boto3.Session, endpoint_url: str) -> ShardSource:
    region = Arn.parse(spec.event_source_arn).region
    if spec.event_source == "aws:dynamodb":
        return DynamoDBStreamSource(
            spec.event_source_arn,
            client=session.client(
                "dynamodbstreams",
                region_name=region,
                endpoint_url=service_endpoint("dynamodbstreams", endpoint_url),
                config=_CLIENT_CONFIG,
            ),
        )
    return KinesisStreamSource(
        spec.event_source_arn,
        client=session.client(
            "kinesis",
            region_name=region,
            endpoint_url=service_endpoint("kinesis", endpoint_url),
            config=_CLIENT_CONFIG,
        ),
    )


def _retention_seconds(spec: EventSourceSpec, session: boto3.Session, endpoint_url: str) -> float:
    """How long the stream keeps records: 24 h for DynamoDB, the stream's own for Kinesis."""
    if spec.event_source != "aws:kinesis":
        return DEFAULT_RETENTION_SECONDS
    kinesis = session.client(
        "kinesis",
        region_name=Arn.parse(spec.event_source_arn).region,
        endpoint_url=service_endpoint("kinesis", endpoint_url),
    )
    summary = kinesis.describe_stream_summary(StreamARN=spec.event_source_arn)
    return float(summary["StreamDescriptionSummary"]["RetentionPeriodHours"]) * 3600


# --- one event source's run, in its own thread --------------------------------------------


class _Run:
    """One event source's mapping as `LocalMapping.run` drives it from a thread: `run` puts the
    run on the `done` queue when it returns, with `error` set if it failed."""

    def __init__(self, name: str, done: queue.Queue[_Run]) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._done = done

    def run(self, exit_when_idle: float | None) -> None:
        try:
            self._run(exit_when_idle)
        except BaseException as error:  # raised by LocalMapping.run, in the caller's thread
            self.error = error
        finally:
            self._done.put(self)

    def _run(self, exit_when_idle: float | None) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _QueueRun(_Run):
    """One queue's poller. No lease: pollers of one queue share it, as AWS's do."""

    def __init__(self, mapping: QueueMapping, poller: QueuePoller, *, done: queue.Queue[_Run]):
        super().__init__(mapping.spec.logical_id, done)
        self._poller = poller

    def stop(self) -> None:
        self._poller.stop()

    def _run(self, exit_when_idle: float | None) -> None:
        self._poller.run(exit_when_idle=exit_when_idle)


class _StreamRun(_Run):
    """One stream's event source mapping: wait for the lease, run, release."""

    def __init__(
        self,
        stream: StreamMapping,
        store: DynamoDBCheckpointStore,
        engine: EventSourceMapping,
        *,
        stopping: threading.Event,
        done: queue.Queue[_Run],
    ) -> None:
        super().__init__(stream.spec.logical_id, done)
        self._store = store
        self._engine = engine
        self._stopping = stopping

    def stop(self) -> None:
        self._engine.stop()

    def _run(self, exit_when_idle: float | None) -> None:
        store = self._store
        if store.acquire_lease(stop=self._stopping) is None:
            return  # stopped while waiting
        logger.info(
            "mapping %s on %s: lease taken", store.mapping.function, store.mapping.source_arn
        )
        try:
            with store.heartbeat(self._lost):
                self._engine.run(exit_when_idle=exit_when_idle)
        finally:
            self._release(store)

    def _lost(self, lost: LeaseLost) -> None:
        logger.error("%s: stopping", lost)
        self.error = lost
        self.stop()

    @staticmethod
    def _release(store: DynamoDBCheckpointStore) -> None:
        try:
            store.release_lease()
        except (BotoCoreError, ClientError) as error:
            # It expires by itself: the next mapping waits at most `lease_seconds`.
            logger.warning(
                "mapping %s on %s: lease not released (%s)",
                store.mapping.function,
                store.mapping.source_arn,
                error,
            )
