"""Backfill: offer every item a table holds now to a function's per-record handler.

Contract (README "Backfill"): the mapping starts first, at TRIM_HORIZON, so every change from
then on arrives through the stream; the scan then offers each item as an `INSERT` record in
Lambda's DynamoDB-stream shape whose SequenceNumber is "0", below any real one (DynamoDB's are
positive). A handler that applies a change only when its sequence number is newer than the stored
one (the worked example's guard) therefore never lets a scanned item overwrite a streamed change,
and a streamed change always overwrites a scanned one. Every synthetic record has the same
sequence number, so a partial batch response cannot name one of them: a batch that fails in any
way is offered again one record at a time (the guard makes the repeat harmless).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.backoff import Backoff
from streams.deadletter import DeadLetter, DeadLetterSink, ErrorInfo, FunctionInfo
from streams.mapping.invoke import Invoker, NotInvoked
from streams.mapping.responses import interpret
from streams.records import DynamoDBRecord
from streams.sources import attribute_value_to_lambda

#: Below every real DynamoDB Streams sequence number (those are positive decimal strings).
BACKFILL_SEQUENCE_NUMBER = "0"


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


@dataclass(frozen=True)
class BackfillSummary:
    offered: int
    applied: int
    parked: int
    retried: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "applied": self.applied,
            "parked": self.parked,
            "retried": self.retried,
            "seconds": round(self.seconds, 3),
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


class SegmentPositions:
    """Each segment's LastEvaluatedKey, kept in a JSON file after every page offered."""

    def __init__(self, path: Path | None, total_segments: int) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._positions: dict[str, Any] = {}
        if path is not None and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("segments") != total_segments:
                raise ValueError(
                    f"{path} was written by a backfill of {saved.get('segments')} segments, "
                    f"not {total_segments}: use the same --segments or another --state"
                )
            self._positions = saved["positions"]

    def start(self, segment: int) -> tuple[bool, dict[str, Any] | None]:
        """(finished, the key to scan on from) for `segment`."""
        position = self._positions.get(str(segment))
        if position is None:
            return False, None
        return bool(position["done"]), position["key"]

    def record(self, segment: int, key: dict[str, Any] | None, total: int) -> None:
        with self._lock:
            self._positions[str(segment)] = {"key": key, "done": key is None}
            if self._path is None:
                return
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"segments": total, "positions": self._positions}))
            os.replace(temporary, self._path)


@dataclass
class _Counts:
    offered: int = 0
    applied: int = 0
    parked: int = 0
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


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

    def run(self) -> BackfillSummary:
        started = self._clock()
        threads = [
            threading.Thread(target=self._segment, args=(segment,), name=f"backfill-{segment}")
            for segment in range(self._settings.segments)
        ]
        errors: list[BaseException] = []

        for thread in threads:
            thread.run = _capturing(thread.run, errors)  # type: ignore[method-assign]
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        counts = self._counts
        return BackfillSummary(
            counts.offered, counts.applied, counts.parked, counts.retried, self._clock() - started
        )

    def _segment(self, segment: int) -> None:
        finished, key = self._positions.start(segment)
        while not finished:
            request: dict[str, Any] = {
                "TableName": self._table,
                "Segment": segment,
                "TotalSegments": self._settings.segments,
                "ConsistentRead": self._settings.consistent_read,
                "ReturnConsumedCapacity": "TOTAL",
            }
            if key is not None:
                request["ExclusiveStartKey"] = key
            page = self._dynamodb.scan(**request)
            self._pacer.spend(float(page.get("ConsumedCapacity", {}).get("CapacityUnits", 0.0)))
            items = page.get("Items", [])
            for start in range(0, len(items), self._settings.batch_size):
                self._offer(items[start : start + self._settings.batch_size])
            key = page.get("LastEvaluatedKey")
            # Kept only once the page is offered: a rerun offers it again, never skips it.
            self._positions.record(segment, key, self._settings.segments)
            finished = key is None
            if self._on_page is not None:
                self._on_page(segment, len(items))

    def _offer(self, items: Sequence[Mapping[str, Any]]) -> None:
        now = time.time()
        records = [
            synthetic_record(
                item, self._keys, stream_arn=self._stream_arn, region=self._region, now=now
            )
            for item in items
        ]
        self._counts.add(offered=len(records))
        if self._succeeds(records):
            self._counts.add(applied=len(records))
            return
        for record in records:
            self._offer_alone(record)

    def _succeeds(self, records: list[dict[str, Any]]) -> bool:
        try:
            result = self._invoke({"Records": records}, self._settings.deadline_seconds)
        except NotInvoked:
            return False
        outcome = interpret(
            result, [BACKFILL_SEQUENCE_NUMBER] * len(records), report_batch_item_failures=True
        )
        return outcome.succeeded

    def _offer_alone(self, record: dict[str, Any]) -> None:
        for attempt in range(self._settings.max_attempts):
            if attempt:
                self._counts.add(retried=1)
                self._sleep(self._settings.backoff.delay(attempt - 1))
            if self._succeeds([record]):
                self._counts.add(applied=1)
                return
        self._park(record)

    def _park(self, record: dict[str, Any]) -> None:
        letter = DeadLetter(
            record=DynamoDBRecord(record),
            reason="backfill",
            # The type only: an error message can repeat an attribute value.
            error=ErrorInfo("BackfillFailed", "the handler failed every attempt", ""),
            attempts=self._settings.max_attempts,
            failed_at=datetime.now(UTC),
            function=FunctionInfo(name=self._function),
        )
        if self._sink.park([letter]) != [None]:
            self._counts.add(parked=1)
            return
        raise RuntimeError(f"could not park backfill record {record['eventID']}")


def _capturing(run: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    def wrapped() -> None:
        try:
            run()
        except BaseException as error:  # surfaced by Backfill.run in the caller's thread
            errors.append(error)

    return wrapped
