"""Backfill: offer every item a table holds now to a function's per-record handler.

Contract (README "Backfill"): the mapping starts first, at TRIM_HORIZON, so every change from
then on arrives through the stream; the scan then offers each item as an `INSERT` record in
Lambda's DynamoDB-stream shape whose SequenceNumber is "0", below any real one (DynamoDB's are
positive). A handler that applies a change only when its sequence number is newer than the stored
one (the worked example's guard) therefore never lets a scanned item overwrite a streamed change,
and a streamed change always overwrites a scanned one. Every synthetic record has the same
sequence number, so a partial batch response cannot name one of them: a batch that fails in any
way is offered again one record at a time (the guard makes the repeat harmless).

The handler runs where `invoke` says: the function's warm worker processes (locally) or the
deployed function (`streams.ops.deployed`). A throttled invocation (`NotInvoked`) costs no
attempt: it is backed off and offered again, never parked. Segment positions are kept after
each page is offered (a file, or the local mapping's state table), so an interrupted backfill
goes on where it stopped; a page cut short is offered again, never skipped.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from streams.arn import Arn
from streams.backoff import Backoff
from streams.batch import TransientErrors
from streams.deadletter import (
    DeadLetter,
    DeadLetterSink,
    ErrorInfo,
    FunctionInfo,
    SqsDeadLetterQueue,
)
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.mapping.function.interpreter import resolve_interpreter
from streams.mapping.function.pool import WorkerPool
from streams.mapping.invoke import Invoker, NotInvoked
from streams.mapping.responses import Outcome, interpret
from streams.mapping.state.layout import MappingId, ensure_table
from streams.records import DynamoDBRecord
from streams.sources import attribute_value_to_lambda

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from streams.local.run import LocalMapping
    from streams.local.template import TemplateFunction

#: Below every real DynamoDB Streams sequence number (those are positive decimal strings).
BACKFILL_SEQUENCE_NUMBER = "0"
#: Lambda's payload limit for a synchronous invocation is 6 MB; the event's envelope fits in
#: the room left.
MAX_EVENT_BYTES = 6 * 1024 * 1024 - 1024
#: The state table's items of a backfill: one per segment, in the mapping's partition.
BACKFILL_PREFIX = "backfill#"
#: Throttling, 5xx, dropped connections and timeouts: the batch core's own rule.
_TRANSIENT = TransientErrors()


def synthetic_record(
    item: Mapping[str, Any],
    key_names: Sequence[str],
    *,
    stream_arn: str,
    region: str,
    now: float,
) -> dict[str, Any]:
    """`item` (wire format, as Scan returns it) as the INSERT record Lambda would deliver.

    boto3 hands binary values over as bytes; Lambda's records carry them in base64, as the
    stream sources convert them (`attribute_value_to_lambda`)."""
    item = {name: attribute_value_to_lambda(value) for name, value in item.items()}
    keys = {name: item[name] for name in key_names}
    size = len(json.dumps(keys, separators=(",", ":"))) + len(
        json.dumps(item, separators=(",", ":"))
    )
    return {
        "eventID": uuid.uuid4().hex,
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": region,
        "dynamodb": {
            "ApproximateCreationDateTime": int(now),
            "Keys": keys,
            "NewImage": item,
            "SequenceNumber": BACKFILL_SEQUENCE_NUMBER,
            "SizeBytes": size,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": stream_arn,
    }


def batches(
    records: Sequence[dict[str, Any]], *, max_records: int, max_bytes: int = MAX_EVENT_BYTES
) -> Iterator[list[dict[str, Any]]]:
    """`records` in order, in batches of at most `max_records` whose event is within `max_bytes`
    as JSON (an item is at most 400 KB, so one record always fits)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        record_size = len(json.dumps(record, separators=(",", ":")).encode()) + 1
        if batch and (len(batch) == max_records or size + record_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        yield batch


@dataclass(frozen=True)
class BackfillSettings:
    segments: int = 4
    batch_size: int = 100
    #: Read capacity units per second the scan may consume (a share of provisioned, or a rate).
    read_units_per_second: float | None = None
    consistent_read: bool = False
    max_attempts: int = 4
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.1, cap=5.0))
    deadline_seconds: float = 60.0
    #: Invocations in flight at most (default: one per segment).
    concurrency: int | None = None


@dataclass(frozen=True)
class BackfillSummary:
    offered: int
    applied: int
    parked: int
    retried: int
    throttled: int
    seconds: float
    #: Stopped before the end (`Backfill.stop`, Ctrl-C): a rerun with the same positions goes on.
    stopped: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "applied": self.applied,
            "parked": self.parked,
            "retried": self.retried,
            "throttled": self.throttled,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
        }


class Pacer:
    """Keeps consumed read units at most `rate` per second (clock and sleep injectable)."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"need a positive read rate, got {rate}")
        self._rate, self._clock, self._sleep = rate, clock, sleep
        self._lock = threading.Lock()
        self._start: float | None = None
        self._spent = 0.0

    def spend(self, units: float) -> None:
        """Account for `units` just consumed; wait until they fit in the rate."""
        if self._rate is None:
            return
        with self._lock:
            now = self._clock()
            if self._start is None:
                self._start = now
            self._spent += units
            wait = self._start + self._spent / self._rate - now
        if wait > 0:
            self._sleep(wait)


#: A segment's saved position: finished, or the key to scan on from (None: from the start).
Position = tuple[bool, dict[str, Any] | None]


class PositionStore(Protocol):
    """Where segment positions are kept between runs."""

    #: Where, for messages ("positions.json", "the state table streams-local-state").
    where: str

    def load(self) -> tuple[int, dict[int, Position]] | None:
        """(the backfill's segment count, each saved segment's position), or None."""
        ...

    def save(self, total: int, segment: int, key: dict[str, Any] | None) -> None:
        """Keep `segment`'s position: the key to go on from, None once it is finished."""
        ...

    def clear(self) -> None: ...


def _key_to_json(key: Mapping[str, Any]) -> dict[str, Any]:
    """A scan key (S, N or B values: the only key types) as JSON; B as base64."""
    return {
        name: {"B64": base64.b64encode(value["B"]).decode()} if "B" in value else dict(value)
        for name, value in key.items()
    }


def _key_from_json(key: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: {"B": base64.b64decode(value["B64"])} if "B64" in value else dict(value)
        for name, value in key.items()
    }


class FilePositions:
    """Positions in a JSON file (`--state PATH`), replaced atomically after every page."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock = threading.Lock()
        self._saved: dict[str, Any] = {}

    def load(self) -> tuple[int, dict[int, Position]] | None:
        if not self.path.exists():
            return None
        try:
            saved = json.loads(self.path.read_text())
            total = int(saved["segments"])
            positions = {
                int(segment): (
                    bool(p["done"]),
                    None if p["key"] is None else _key_from_json(p["key"]),
                )
                for segment, p in saved["positions"].items()
            }
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{self.path} is not a backfill's positions ({type(error).__name__}): "
                "pass another --state, or --fresh to start over"
            ) from None
        self._saved = saved
        return total, positions

    def save(self, total: int, segment: int, key: dict[str, Any] | None) -> None:
        with self._lock:
            positions = dict(self._saved.get("positions", {}))
            positions[str(segment)] = {
                "key": None if key is None else _key_to_json(key),
                "done": key is None,
            }
            self._saved = {"segments": total, "positions": positions}
            temporary = self.path.with_suffix(self.path.suffix + ".tmp")
            temporary.write_text(json.dumps(self._saved))
            os.replace(temporary, self.path)

    def clear(self) -> None:
        with self._lock:
            self._saved = {}
            self.path.unlink(missing_ok=True)


class TablePositions:
    """Positions in the local mapping's state table, beside its checkpoints: one item per
    segment, `sk = "backfill#<segment>"` in the mapping's partition (docs/mapping-state.md)."""

    def __init__(self, client: DynamoDBClient, table_name: str, mapping: MappingId) -> None:
        self._client, self._table, self._mapping = client, table_name, mapping
        self.where = f"the state table {table_name}"

    def _items(self) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        return [
            item
            for page in paginator.paginate(
                TableName=self._table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues={
                    ":pk": {"S": self._mapping.key},
                    ":prefix": {"S": BACKFILL_PREFIX},
                },
                ConsistentRead=True,
            )
            for item in page["Items"]
        ]

    def load(self) -> tuple[int, dict[int, Position]] | None:
        items = self._items()
        if not items:
            return None
        totals = {int(item["segments"]["N"]) for item in items}
        positions = {
            int(item["sk"]["S"].removeprefix(BACKFILL_PREFIX)): (
                item["done"]["BOOL"],
                item["key"]["M"] if "key" in item else None,
            )
            for item in items
        }
        return max(totals), positions

    def save(self, total: int, segment: int, key: dict[str, Any] | None) -> None:
        item: dict[str, Any] = {
            "pk": {"S": self._mapping.key},
            "sk": {"S": f"{BACKFILL_PREFIX}{segment}"},
            # Every item of a mapping's partition names it (the monitor reads them so).
            "function": {"S": self._mapping.function},
            "eventSourceARN": {"S": self._mapping.source_arn},
            "segments": {"N": str(total)},
            "done": {"BOOL": key is None},
            "savedAt": {"S": datetime.now(UTC).isoformat()},
        }
        if key is not None:
            item["key"] = {"M": key}
        self._client.put_item(TableName=self._table, Item=item)

    def clear(self) -> None:
        for item in self._items():
            self._client.delete_item(
                TableName=self._table, Key={"pk": item["pk"], "sk": item["sk"]}
            )


class SegmentPositions:
    """Each segment's position for one backfill of `total_segments` segments; kept in `store`
    (None: nowhere, a rerun starts over). `fresh` forgets what the store holds."""

    def __init__(
        self, store: PositionStore | None, total_segments: int, *, fresh: bool = False
    ) -> None:
        self._store, self.total = store, total_segments
        #: Where the positions are kept, for messages.
        self.where = "nowhere" if store is None else store.where
        self._positions: dict[int, Position] = {}
        if store is None:
            return
        if fresh:
            store.clear()
            return
        loaded = store.load()
        if loaded is None:
            return
        total, positions = loaded
        if total != total_segments:
            raise UserError(
                f"{store.where} holds a backfill of {total} segments, not {total_segments}: "
                f"pass --segments {total} to go on with it, or --fresh to start over"
            )
        self._positions = positions

    @property
    def all_done(self) -> bool:
        return len(self._positions) == self.total and all(
            done for done, _key in self._positions.values()
        )

    def start(self, segment: int) -> Position:
        """(finished, the key to scan on from) for `segment`."""
        return self._positions.get(segment, (False, None))

    def record(self, segment: int, key: dict[str, Any] | None) -> None:
        self._positions[segment] = (key is None, key)
        if self._store is not None:
            self._store.save(self.total, segment, key)


@dataclass
class _Counts:
    offered: int = 0
    applied: int = 0
    parked: int = 0
    retried: int = 0
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class _Stopped(Exception):
    """`Backfill.stop` was called: the segment ends without keeping its current page."""


class Backfill:
    """A parallel scan of `table_name`, each item offered to `invoke` as a synthetic INSERT."""

    def __init__(
        self,
        *,
        dynamodb: Any,
        table_name: str,
        key_names: Sequence[str],
        stream_arn: str,
        region: str,
        invoke: Invoker,
        sink: DeadLetterSink,
        settings: BackfillSettings,
        positions: SegmentPositions,
        function_name: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_page: Callable[[int, int], None] | None = None,
    ) -> None:
        self._dynamodb, self._table = dynamodb, table_name
        self._keys, self._stream_arn, self._region = list(key_names), stream_arn, region
        self._invoke, self._sink, self._settings = invoke, sink, settings
        self._positions, self._function = positions, function_name
        self._clock, self._sleep = clock, sleep
        self._pacer = Pacer(settings.read_units_per_second, clock=clock, sleep=sleep)
        self._on_page = on_page
        self._counts = _Counts()
        self._stopping = threading.Event()
        self._in_flight = threading.BoundedSemaphore(settings.concurrency or settings.segments)

    def stop(self) -> None:
        """Stop soon (thread-safe): batches in flight finish, the pages they belong to are not
        kept as done, and `run` returns a summary that says it stopped."""
        self._stopping.set()

    @property
    def stop_requested(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> BackfillSummary:
        """Scan every segment not finished yet. Ctrl-C stops it as `stop()` does, then raises
        `KeyboardInterrupt` once the segments have ended."""
        started = self._clock()
        threads = [
            threading.Thread(target=self._segment, args=(segment,), name=f"backfill-{segment}")
            for segment in range(self._settings.segments)
        ]
        errors: list[BaseException] = []
        for thread in threads:
            thread.run = self._capturing(thread.run, errors)  # type: ignore[method-assign]
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            self.stop()
            for thread in threads:
                thread.join()
            raise
        if errors:
            raise errors[0]
        counts = self._counts
        return BackfillSummary(
            counts.offered,
            counts.applied,
            counts.parked,
            counts.retried,
            counts.throttled,
            self._clock() - started,
            stopped=self._stopping.is_set(),
        )

    def _capturing(
        self, run: Callable[[], None], errors: list[BaseException]
    ) -> Callable[[], None]:
        """`run`, whose error stops the other segments and is raised by `run()` in the
        caller's thread once they have ended (each keeps the pages it offered)."""

        def wrapped() -> None:
            try:
                run()
            except BaseException as error:
                errors.append(error)
                self.stop()

        return wrapped

    def _segment(self, segment: int) -> None:
        finished, key = self._positions.start(segment)
        try:
            while not finished and not self._stopping.is_set():
                request: dict[str, Any] = {
                    "TableName": self._table,
                    "Segment": segment,
                    "TotalSegments": self._settings.segments,
                    "ConsistentRead": self._settings.consistent_read,
                    "ReturnConsumedCapacity": "TOTAL",
                }
                if key is not None:
                    request["ExclusiveStartKey"] = key
                page = self._scan(request)
                self._pacer.spend(float(page.get("ConsumedCapacity", {}).get("CapacityUnits", 0.0)))
                items = page.get("Items", [])
                now = time.time()
                records = [
                    synthetic_record(
                        item, self._keys, stream_arn=self._stream_arn, region=self._region, now=now
                    )
                    for item in items
                ]
                for batch in batches(records, max_records=self._settings.batch_size):
                    if self._stopping.is_set():
                        return  # the page is not kept: a rerun offers it again
                    self._offer(batch)
                key = page.get("LastEvaluatedKey")
                # Kept only once the page is offered: a rerun offers it again, never skips it.
                self._positions.record(segment, key)
                finished = key is None
                if self._on_page is not None:
                    self._on_page(segment, len(items))
        except _Stopped:
            return

    def _scan(self, request: dict[str, Any]) -> dict[str, Any]:
        """One page; a throttled, 5xx or dropped read is read again after a pause (botocore's
        own retries gave up on it), for as long as it takes: a page is never skipped."""
        failures = 0
        while True:
            try:
                page: dict[str, Any] = self._dynamodb.scan(**request)
            except Exception as error:
                if not _TRANSIENT(error):
                    raise
            else:
                return page
            if self._stopping.is_set():
                raise _Stopped
            self._counts.add(throttled=1)
            self._sleep(self._settings.backoff.delay(failures))
            failures += 1

    def _offer(self, records: list[dict[str, Any]]) -> None:
        self._counts.add(offered=len(records))
        if self._outcome(records).succeeded:
            self._counts.add(applied=len(records))
            return
        for record in records:
            self._offer_alone(record)

    def _outcome(self, records: list[dict[str, Any]]) -> Outcome:
        """The function's verdict on `records`; a throttled invocation is offered again after a
        pause, without using up an attempt (as the mapping does)."""
        throttles = 0
        while True:
            try:
                with self._in_flight:
                    result = self._invoke({"Records": records}, self._settings.deadline_seconds)
            except NotInvoked:
                if self._stopping.is_set():
                    raise _Stopped from None
                self._counts.add(throttled=1)
                self._sleep(self._settings.backoff.delay(throttles))
                throttles += 1
                continue
            return interpret(
                result, [BACKFILL_SEQUENCE_NUMBER] * len(records), report_batch_item_failures=True
            )

    def _offer_alone(self, record: dict[str, Any]) -> None:
        outcome: Outcome | None = None
        for attempt in range(self._settings.max_attempts):
            if attempt:
                self._counts.add(retried=1)
                self._sleep(self._settings.backoff.delay(attempt - 1))
            outcome = self._outcome([record])
            if outcome.succeeded:
                self._counts.add(applied=1)
                return
        assert outcome is not None  # max_attempts is at least 1
        self._park(record, outcome)

    def _park(self, record: dict[str, Any], outcome: Outcome) -> None:
        letter = DeadLetter(
            record=DynamoDBRecord(record),
            reason="backfill",
            # The type only: an error message can repeat an attribute value.
            error=ErrorInfo(
                outcome.error_type or "BatchItemFailure", "the handler failed every attempt", ""
            ),
            attempts=self._settings.max_attempts,
            failed_at=datetime.now(UTC),
            function=FunctionInfo(name=self._function),
        )
        if self._sink.park([letter]) != [None]:
            self._counts.add(parked=1)
            return
        raise RuntimeError(f"could not park backfill record {record['eventID']}")


@dataclass(frozen=True)
class BackfillTarget:
    """A function's DynamoDB source table: its name, key, stream and size."""

    table_name: str
    key_names: tuple[str, ...]
    stream_arn: str
    item_count: int
    provisioned_read_units: int

    @classmethod
    def of(cls, dynamodb: Any, stream_arn: str) -> BackfillTarget:
        """The table whose stream is `stream_arn` (`arn:...:table/NAME/stream/LABEL`)."""
        table_name = Arn.parse(stream_arn).resource.split("/")[1]
        try:
            table = dynamodb.describe_table(TableName=table_name)["Table"]
        except dynamodb.exceptions.ResourceNotFoundException:
            raise UserError(f"no table {table_name} (the stream {stream_arn}'s)") from None
        return cls(
            table_name,
            tuple(key["AttributeName"] for key in table["KeySchema"]),
            stream_arn,
            int(table.get("ItemCount", 0)),
            int(table.get("ProvisionedThroughput", {}).get("ReadCapacityUnits", 0)),
        )

    def segments(self) -> int:
        """DynamoDB's parallel scan guidance is a segment per ~2 GB; locally, a few: one per
        5,000 items, at most 8."""
        return min(8, self.item_count // 5000 + 1)

    def read_rate(self, share: float, on_demand_rate: float | None) -> float | None:
        """Read units a second for the scan: `share` of provisioned capacity; on an on-demand
        table, `on_demand_rate` (None: unpaced)."""
        return (
            self.provisioned_read_units * share if self.provisioned_read_units else on_demand_rate
        )


def dynamodb_stream_of(function: TemplateFunction) -> str:
    """The ARN of `function`'s one DynamoDB stream event source (a backfill needs exactly one)."""
    sources = [s for s in function.event_sources if s.event_source == "aws:dynamodb"]
    if len(sources) != 1:
        raise UserError(
            f"function {function.logical_id} has {len(sources)} DynamoDB stream event sources: "
            "backfill needs exactly one"
        )
    return sources[0].event_source_arn


def local_positions(
    mapping: LocalMapping,
    dynamodb: DynamoDBClient,
    stream_arn: str,
    segments: int,
    *,
    state: Path | None,
    fresh: bool,
) -> SegmentPositions:
    """Positions in `state` (a file), else in the local mapping's state table, beside the
    checkpoints of the same function and stream."""
    store: PositionStore
    if state is not None:
        store = FilePositions(state)
    else:
        ensure_table(dynamodb, mapping.state_table)
        store = TablePositions(
            dynamodb, mapping.state_table, MappingId(mapping.function.logical_id, stream_arn)
        )
    return SegmentPositions(store, segments, fresh=fresh)


@contextlib.contextmanager
def function_backfill(
    mapping: LocalMapping,
    session: boto3.Session,
    target: BackfillTarget,
    *,
    settings: BackfillSettings,
    positions: SegmentPositions,
    on_page: Callable[[int, int], None] | None = None,
) -> Iterator[Backfill]:
    """A backfill of `mapping`'s function in warm worker processes of its own (as `streams run`
    runs it), parking in the function's own dead-letter queue (its environment names it)."""
    spec = mapping.function_spec
    endpoint = mapping.endpoint_url
    sink = SqsDeadLetterQueue.from_environment(
        spec.environment,
        sqs=session.client("sqs", endpoint_url=service_endpoint("sqs", endpoint)),
        s3=session.client("s3", endpoint_url=service_endpoint("s3", endpoint)),
    )
    with WorkerPool(spec, resolve_interpreter(spec.runtime, spec.code_uri)) as workers:
        yield Backfill(
            dynamodb=session.client(
                "dynamodb", endpoint_url=service_endpoint("dynamodb", endpoint)
            ),
            table_name=target.table_name,
            key_names=target.key_names,
            stream_arn=target.stream_arn,
            region=mapping.region,
            invoke=workers,
            sink=sink,
            settings=settings,
            positions=positions,
            function_name=spec.name,
            on_page=on_page,
        )
