"""GIVEN helpers for the mapping's tests (no tests here).

- `MemorySource`: a `ShardSource` in memory (our own seam, not an AWS API) for rules about
  lineage, time and throttling, which moto cannot show (ENVIRONMENT.md).
- `FastClock`: epoch time running faster than real time, so minutes pass in milliseconds.
- `VirtualClock`: epoch time that moves only when every thread of the mapping waits, so a
  rule about time holds however slow the machine is.
- `Recorder`: an invoker that runs a Python function in-process and keeps every event.
- `Journal` and `OpenLogged`: log when shards are finished and opened, for lineage order.
- Record factories in the exact Lambda shapes of docs/esm.md section 5.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3

from streams.backoff import Backoff
from streams.mapping import (
    EventSourceMapping,
    InProcessInvoker,
    InvokeResult,
    MappingSettings,
    MemoryCheckpointStore,
    MetricCounters,
)
from streams.mapping.invoke import event_json
from streams.sources import DynamoDBStreamSource, KinesisStreamSource
from streams.sources.base import (
    EventSource,
    Position,
    ReadResult,
    Shard,
    ShardReader,
    ShardSource,
)

DYNAMODB_ARN = (
    "arn:aws:dynamodb:us-east-1:123456789012:table/Children/stream/2026-11-22T00:00:00.000"
)
KINESIS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/updates"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:processor"
START = 1_795_000_000.0  # the fake clock's epoch seconds at the start of a test


# --- time ---------------------------------------------------------------------------------


class FastClock:
    """Epoch seconds that run `scale` times faster than real time, from `START`.

    `sleep(s)` sleeps `s / scale` real seconds. Time moves evenly for every thread, however many
    sleep, so minutes-long rules (record age, batching and tumbling windows, retry pauses) pass
    in milliseconds. Tests assert on what happened and in which order, never on durations;
    margins between what a test expects and what could happen are many fake seconds wide.
    """

    def __init__(self, scale: float = 200.0, start: float = START) -> None:
        self.scale = scale
        self._start = start
        self._origin = time.monotonic()

    def __call__(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self.scale

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.scale)


class VirtualClock:
    """Epoch seconds, from `START`, that move only when every thread of the mapping waits.

    `sleep(s)` returns once the clock has reached `s` seconds after the call, and the clock moves
    (to the earliest wake-up asked for) only while each of the mapping's threads (the one that
    made the clock, which runs the mapping, and the shard threads `poll-*`, `lane-*`) is either
    in `sleep`, blocked in a `threading.Condition.wait` nobody has notified yet, or joining a
    thread (the mapping waiting for its shards' threads to end); a thread starting (no frame
    yet, or its starter in `Event.wait`) is not waiting. So no time
    passes while a function runs, a record is read or an on-failure record is sent, however
    long those take in real time: what happens at which fake second does not depend on the
    machine's speed, only on the engine's own waits.

    A thread blocked in `Condition.wait` is seen through its frame: CPython's `wait` keeps its
    `waiter` lock in the condition's `_waiters` until a `notify` takes it out. A waiter found
    there on two passes was waiting all the time between them, so every thread was waiting at
    the moment the second pass began.
    """

    _CONDITION_WAIT = threading.Condition.wait.__code__
    _EVENT_WAIT = threading.Event.wait.__code__
    # CPython 3.11-3.12's join; on a Python without it, a joining thread counts as running and
    # a test that needs it says "never all wait" instead of passing by chance.
    _JOIN = getattr(getattr(threading.Thread, "_wait_for_tstate_lock", None), "__code__", None)
    _STUCK = 60.0  # real seconds without the clock moving: the test is stuck, say so

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._lock = threading.Condition()
        self._sleepers: dict[int, float] = {}  # thread id -> when it wakes
        self._driver = threading.get_ident()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        me = threading.get_ident()
        stuck_at = time.monotonic() + self._STUCK
        with self._lock:
            wake = self._now + seconds
            self._sleepers[me] = wake
            try:
                while self._now < wake:
                    if self._quiet():
                        self._now = min(self._sleepers.values())
                        self._lock.notify_all()
                        continue
                    if time.monotonic() > stuck_at:
                        raise RuntimeError("VirtualClock: the mapping's threads never all wait")
                    self._lock.wait(0.0005)  # threads in Condition.wait cannot tell us they block
            finally:
                del self._sleepers[me]

    def _quiet(self) -> bool:
        """Whether every thread of the mapping waits (called holding the lock)."""
        if any(wake <= self._now for wake in self._sleepers.values()):
            return False  # woken, not yet running again
        threads = [
            thread
            for thread in threading.enumerate()
            if thread.ident == self._driver or thread.name.startswith(("poll-", "lane-"))
        ]
        waiting: list[tuple[Any, Any]] = []
        frames = sys._current_frames()
        for thread in threads:
            if thread.ident in self._sleepers:
                continue
            frame = frames.get(thread.ident) if thread.ident is not None else None
            if frame is None:
                return False  # starting: no Python frame yet
            if frame.f_code is self._JOIN:
                continue  # waiting for threads of the mapping to end
            if frame.f_code is not self._CONDITION_WAIT or (
                frame.f_back is not None and frame.f_back.f_code is self._EVENT_WAIT
            ):
                return False  # running, or waiting for a thread to start (Event.wait)
            condition: Any = frame.f_locals["self"]
            waiter = frame.f_locals.get("waiter")
            if waiter is None or waiter not in condition._waiters:
                return False
            waiting.append((condition, waiter))
        return all(waiter in condition._waiters for condition, waiter in waiting)


# --- records ------------------------------------------------------------------------------


def dynamodb_record(
    sequence: int,
    *,
    key: str = "k-1",
    arrival: float = START,
    event_name: str = "MODIFY",
    new_image: dict[str, Any] | None = None,
) -> dict[str, Any]:
    keys = {"pk": {"S": key}}
    return {
        "eventID": f"{sequence:032x}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": int(arrival),
            "Keys": keys,
            "NewImage": new_image if new_image is not None else {**keys, "n": {"N": str(sequence)}},
            "SequenceNumber": f"{sequence:021d}",
            "SizeBytes": 40,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": DYNAMODB_ARN,
    }


def kinesis_record(
    sequence: int,
    *,
    key: str = "pk-1",
    arrival: float = START,
    data: object = None,
    shard_id: str = "shardId-000000000000",
) -> dict[str, Any]:
    number = f"{sequence:056d}"
    raw = json.dumps({"n": sequence} if data is None else data).encode()
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": key,
            "sequenceNumber": number,
            "data": base64.b64encode(raw).decode(),
            "approximateArrivalTimestamp": round(arrival, 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/streams-local-mapping",
        "awsRegion": "us-east-1",
        "eventSourceARN": KINESIS_ARN,
    }


def sequence_number(record: dict[str, Any]) -> str:
    if record["eventSource"] == "aws:dynamodb":
        return str(record["dynamodb"]["SequenceNumber"])
    return str(record["kinesis"]["sequenceNumber"])


def order_key(record: dict[str, Any]) -> str:
    if record["eventSource"] == "aws:dynamodb":
        return str(record["dynamodb"]["Keys"]["pk"]["S"])
    return str(record["kinesis"]["partitionKey"])


# --- an in-memory shard source ------------------------------------------------------------


@dataclass
class _MemoryShard:
    shard_id: str
    parents: tuple[str, ...]
    records: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False


class MemorySource:
    """A `ShardSource` whose shards and records live in memory; safe to change while read.

    Records are Lambda-shaped already (see the factories). `reads` logs each read as
    `(shard_id, limit, returned)`; `throttle(shard_id, n)` makes its next `n` reads throttled.
    """

    def __init__(self, event_source: EventSource = "aws:dynamodb") -> None:
        self.event_source: EventSource = event_source
        self.source_arn = DYNAMODB_ARN if event_source == "aws:dynamodb" else KINESIS_ARN
        self._lock = threading.Lock()
        self._shards: dict[str, _MemoryShard] = {}
        self._throttled: dict[str, int] = {}
        self._broken: dict[str, Exception] = {}
        self._after_reads: dict[str, list[tuple[int, Callable[[], None]]]] = {}
        self._read_counts: dict[str, int] = {}
        self.reads: list[tuple[str, int, int]] = []  # (shard id, limit, records returned)
        self.opened: list[tuple[str, Position]] = []
        self.on_read: Callable[[str, int, int], None] = lambda shard_id, limit, returned: None

    def add_shard(self, shard_id: str, parents: Iterable[str] = ()) -> None:
        with self._lock:
            self._shards[shard_id] = _MemoryShard(shard_id, tuple(parents))

    def put(self, shard_id: str, *records: dict[str, Any]) -> None:
        with self._lock:
            shard = self._shards[shard_id]
            if shard.closed:
                raise ValueError(f"{shard_id} is closed")
            shard.records.extend(records)

    def close(self, shard_id: str) -> None:
        with self._lock:
            self._shards[shard_id].closed = True

    def throttle(self, shard_id: str, reads: int) -> None:
        with self._lock:
            self._throttled[shard_id] = reads

    def break_shard(self, shard_id: str, error: Exception) -> None:
        """Every read of the shard raises `error`."""
        with self._lock:
            self._broken[shard_id] = error

    def after_reads(self, shard_id: str, reads: int, action: Callable[[], None]) -> None:
        """Run `action` (say, put records or reshard) right after the shard's `reads`-th read."""
        with self._lock:
            self._after_reads.setdefault(shard_id, []).append((reads, action))

    def list_shards(self) -> list[Shard]:
        with self._lock:
            return [
                Shard(
                    shard_id=shard.shard_id,
                    parent_shard_ids=shard.parents,
                    starting_sequence_number=(
                        sequence_number(shard.records[0]) if shard.records else "0"
                    ),
                    ending_sequence_number=(
                        (sequence_number(shard.records[-1]) if shard.records else "0")
                        if shard.closed
                        else None
                    ),
                )
                for shard in self._shards.values()
            ]

    def open(self, shard_id: str, position: Position) -> MemoryReader:
        with self._lock:
            self.opened.append((shard_id, position))
            shard = self._shards[shard_id]
            numbers = [int(sequence_number(record)) for record in shard.records]
            if position.kind == "TRIM_HORIZON":
                index = 0
            elif position.kind == "LATEST":
                index = len(shard.records)
            elif position.kind == "AT_TIMESTAMP":
                assert position.timestamp is not None
                moment = position.timestamp.timestamp()
                arrivals = [_arrival(record) for record in shard.records]
                index = next((i for i, a in enumerate(arrivals) if a >= moment), len(arrivals))
            else:
                assert position.sequence_number is not None
                target = int(position.sequence_number)
                after = position.kind == "AFTER_SEQUENCE_NUMBER"
                index = next(
                    (i for i, n in enumerate(numbers) if n > target or (n == target and not after)),
                    len(numbers),
                )
        return MemoryReader(self, shard, index)

    def _read(self, shard: _MemoryShard, index: int, limit: int) -> tuple[ReadResult, int]:
        with self._lock:
            if shard.shard_id in self._broken:
                raise self._broken[shard.shard_id]
            remaining = self._throttled.get(shard.shard_id, 0)
            if remaining:
                self._throttled[shard.shard_id] = remaining - 1
                self.reads.append((shard.shard_id, limit, 0))
                result = ReadResult(records=[], shard_ended=False, throttled=True)
            else:
                records = shard.records[index : index + limit]
                index += len(records)
                ended = shard.closed and index >= len(shard.records)
                self.reads.append((shard.shard_id, limit, len(records)))
                result = ReadResult(records=[dict(record) for record in records], shard_ended=ended)
            count = self._read_counts[shard.shard_id] = self._read_counts.get(shard.shard_id, 0) + 1
            due = [
                action for at, action in self._after_reads.get(shard.shard_id, []) if at == count
            ]
        self.on_read(shard.shard_id, limit, len(result.records))
        for action in due:
            action()
        return result, index


class MemoryReader:
    def __init__(self, source: MemorySource, shard: _MemoryShard, index: int) -> None:
        self._source = source
        self._shard = shard
        self._index = index

    def read(self, limit: int) -> ReadResult:
        result, self._index = self._source._read(self._shard, self._index, limit)
        return result


def _arrival(record: dict[str, Any]) -> float:
    if record["eventSource"] == "aws:dynamodb":
        return float(record["dynamodb"]["ApproximateCreationDateTime"])
    return float(record["kinesis"]["approximateArrivalTimestamp"])


# --- the function -------------------------------------------------------------------------


class Recorder:
    """An invoker running `function(event)` in-process (it may raise); keeps every event.

    Also measures concurrency (`max_in_flight`: the most invocations seen at once) and, given
    a clock, when each invocation started and ended (`times`).
    """

    def __init__(
        self,
        function: Callable[[dict[str, Any]], Any] = lambda event: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.times: list[tuple[float, float]] = []
        self.events: list[dict[str, Any]] = []
        self.results: list[InvokeResult] = []
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._invoker = InProcessInvoker(lambda event, context: function(event))

    def __call__(self, event: Any, deadline_seconds: float) -> InvokeResult:
        with self._lock:
            self.events.append(json.loads(event_json(event)))  # as the function receives it
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = self.clock()
        try:
            result = self._invoker(event, deadline_seconds)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.results.append(result)
            self.times.append((started, self.clock()))
        return result

    def batches(self) -> list[list[str]]:
        """The sequence numbers of each invocation's records, in invocation order."""
        return [[sequence_number(record) for record in event["Records"]] for event in self.events]

    def delivered(self) -> list[str]:
        return [number for batch in self.batches() for number in batch]


def seq(*numbers: int, kind: EventSource = "aws:dynamodb") -> list[str]:
    """Sequence numbers as the factories write them."""
    width = 21 if kind == "aws:dynamodb" else 56
    return [f"{number:0{width}d}" for number in numbers]


# --- the order of events across shards -----------------------------------------------------


class Journal(MemoryCheckpointStore):
    """Checkpoints in memory that log `("finished", shard_id)` when a shard is finished."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self._log = log

    def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None:
        super().put(shard_id, sequence_number, shard_finished)
        if shard_finished:
            self._log.append(("finished", shard_id))


class OpenLogged:
    """A shard source that logs `("open", shard_id)` when a reader starts on a shard."""

    def __init__(self, source: ShardSource, log: list[tuple[str, str]]) -> None:
        self.event_source = source.event_source
        self.source_arn = source.source_arn
        self._source = source
        self._log = log

    def list_shards(self) -> list[Shard]:
        return self._source.list_shards()

    def open(self, shard_id: str, position: Position) -> ShardReader:
        self._log.append(("open", shard_id))
        return self._source.open(shard_id, position)


# --- running a mapping --------------------------------------------------------------------


@dataclass
class Run:
    mapping: EventSourceMapping
    checkpoints: MemoryCheckpointStore
    metrics: MetricCounters
    clock: FastClock | VirtualClock


def mapping(
    properties: dict[str, Any],
    source: ShardSource,
    invoker: Any,
    *,
    clock: FastClock | VirtualClock | None = None,
    checkpoints: MemoryCheckpointStore | None = None,
    **options: Any,
) -> Run:
    """A mapping over `source` with a fake clock (default `FastClock`), in-memory checkpoints
    and counters."""
    clock = clock or FastClock()
    checkpoints = checkpoints or MemoryCheckpointStore()
    metrics: MetricCounters = options.pop("metrics", None) or MetricCounters()
    settings = MappingSettings.from_properties(
        {"StartingPosition": "TRIM_HORIZON", **properties}, source.event_source
    )
    options.setdefault("backoff", Backoff(base=1.0, cap=8.0, jitter=False))
    options.setdefault("sleep", clock.sleep)
    engine = EventSourceMapping(
        settings,
        source,
        invoker,
        function_arn=FUNCTION_ARN,
        checkpoints=checkpoints,
        observer=metrics,
        clock=clock,
        **options,
    )
    return Run(engine, checkpoints, metrics, clock)


def run(
    properties: dict[str, Any],
    source: ShardSource,
    invoker: Any,
    *,
    idle: float = 5.0,
    **options: Any,
) -> Run:
    """Run a mapping (see `mapping`) until it has been idle `idle` fake seconds."""
    result = mapping(properties, source, invoker, **options)
    result.mapping.run(exit_when_idle=idle)
    return result


# --- real streams and queues on moto's server ----------------------------------------------


def dynamodb_stream(
    aws: boto3.Session, name: str, view: str = "NEW_AND_OLD_IMAGES", key: str = "pk"
) -> DynamoDBStreamSource:
    """A table with a stream (moto gives it one shard), read by the real DynamoDB source."""
    created = aws.client("dynamodb").create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": view},  # type: ignore[typeddict-item]
    )
    stream_arn = created["TableDescription"]["LatestStreamArn"]
    return DynamoDBStreamSource(stream_arn, client=aws.client("dynamodbstreams"))


def kinesis_stream(aws: boto3.Session, name: str, shards: int = 1) -> KinesisStreamSource:
    client = aws.client("kinesis")
    client.create_stream(StreamName=name, ShardCount=shards)
    arn = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]
    return KinesisStreamSource(arn, client=client, shard_refresh_seconds=0.0)


def queue(aws: boto3.Session, name: str) -> tuple[str, str]:
    """An SQS queue: its URL and ARN."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return url, attributes["Attributes"]["QueueArn"]


def messages(aws: boto3.Session, url: str) -> list[dict[str, Any]]:
    """Every message body on the queue, parsed (and deleted)."""
    sqs = aws.client("sqs")
    bodies: list[dict[str, Any]] = []
    while True:
        received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not received:
            return bodies
        for message in received:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
