"""Keys in parallel: records/s of the batch core by `concurrency`, beside Powertools, same run.

2,000 DynamoDB records over 200 keys, each handled by a call that waits 5 ms (a downstream
call), in two shapes of key:

- uniform: each record's key drawn at random from the 200;
- round-robin: the keys in turn, so no key comes twice within 200 records;
- hot key: one key holds a fifth of them, the rest spread at random over the other 199.

Beside each verdict, the schedule's ceiling: the speed-up its rules allow for that order of keys
if every record took exactly the same time. At most N - 1 records after the checkpoint may be
done (so at most N - 1 are delivered again if it stops), so a record held up behind an earlier
record of its key holds the window: with keys drawn at random, the ceiling at 32 is about 18x.

Contenders: ours at concurrency 1, 8, 32 and 64 (threads), ours with an `async def` handler at
32, Powertools' `BatchProcessor` (one record after another) and `AsyncBatchProcessor` (every
record at once). For each: records/s, its ratio to ours at concurrency 1, and the per-key order
violations the handler saw (a record of a key started while an earlier one of that key had not
finished, or out of stream order): ours must have none.

Targets: concurrency 32 at least 20x concurrency 1 with uniform keys, at least 4x with the hot
key. The hot key's chain is the limit there: its 400 records run one after another, 5 ms each,
so no concurrency drains the batch in less than 2 s.

    python bench/concurrency.py [--records N] [--keys N] [--wait-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import io
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    BatchProcessor,
    EventType,
    async_process_partial_response,
    process_partial_response,
)

from streams import StreamProcessor
from streams.deadletter import DeadLetter
from streams.parallel import KeyedSchedule
from streams.records import parse_records

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Children/stream/2026-11-21T00:00:00.000"


class Order:
    """Counts per-key order violations as records start and end (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._busy: set[str] = set()
        self.violations = 0

    def start(self, key: str, sequence: int) -> None:
        with self._lock:
            if key in self._busy or self._last.get(key, -1) > sequence:
                self.violations += 1
            self._busy.add(key)
            self._last[key] = max(self._last.get(key, -1), sequence)

    def end(self, key: str) -> None:
        with self._lock:
            self._busy.discard(key)


def make_event(count: int, keys: int, *, shape: str, seed: int = 3) -> dict[str, Any]:
    rng = random.Random(seed)
    records = []
    for n in range(count):
        if shape == "round-robin":
            child = n % keys
        elif shape == "hot key":
            child = 0 if rng.random() < 0.2 else rng.randrange(1, keys)
        else:
            child = rng.randrange(keys)
        key = {"childId": {"S": f"c-{child:04d}"}}
        records.append(
            {
                "eventID": f"{n:032x}",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
                "dynamodb": {
                    "ApproximateCreationDateTime": time.time(),
                    "Keys": key,
                    "NewImage": {**key, "status": {"S": "nice"}},
                    "SequenceNumber": str(100 + n),
                    "SizeBytes": 60,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        )
    return {"Records": records}


class _NoDeadLetters:
    def park(self, letters: list[DeadLetter]) -> list[str | None]:
        raise AssertionError("nothing is parked in this bench")


def _quiet() -> dict[str, Any]:
    return {
        "logger": Logger(service="bench", stream=io.StringIO()),
        "metrics": Metrics(namespace="Bench", service="bench"),
    }


def ours(event: dict[str, Any], wait: float, concurrency: int) -> tuple[float, int]:
    order = Order()

    def handle(record: Any) -> None:
        key = record.raw["dynamodb"]["Keys"]["childId"]["S"]
        order.start(key, int(record.sequence_number))
        time.sleep(wait)
        order.end(key)

    core = StreamProcessor(
        handle, dead_letters=_NoDeadLetters(), concurrency=concurrency, **_quiet()
    )
    return _timed(lambda: core.process(event)), order.violations


def ours_async(event: dict[str, Any], wait: float, concurrency: int) -> tuple[float, int]:
    order = Order()

    async def handle(record: Any) -> None:
        key = record.raw["dynamodb"]["Keys"]["childId"]["S"]
        order.start(key, int(record.sequence_number))
        await asyncio.sleep(wait)
        order.end(key)

    core = StreamProcessor(
        handle, dead_letters=_NoDeadLetters(), concurrency=concurrency, **_quiet()
    )
    return _timed(lambda: core.process(event)), order.violations


def powertools(event: dict[str, Any], wait: float) -> tuple[float, int]:
    order = Order()
    processor = BatchProcessor(event_type=EventType.DynamoDBStreams)

    def handle(record: Any) -> None:
        key = record.dynamodb.keys["childId"]
        order.start(key, int(record.dynamodb.sequence_number))
        time.sleep(wait)
        order.end(key)

    seconds = _timed(
        lambda: process_partial_response(
            event=event, record_handler=handle, processor=processor, context=None
        )
    )
    return seconds, order.violations


def powertools_async(event: dict[str, Any], wait: float) -> tuple[float, int]:
    order = Order()
    processor = AsyncBatchProcessor(event_type=EventType.DynamoDBStreams)

    async def handle(record: Any) -> None:
        key = record.dynamodb.keys["childId"]
        order.start(key, int(record.dynamodb.sequence_number))
        await asyncio.sleep(wait)
        order.end(key)

    seconds = _timed(
        lambda: async_process_partial_response(
            event=event, record_handler=handle, processor=processor, context=None
        )
    )
    return seconds, order.violations


def ceiling(event: dict[str, Any], concurrency: int) -> float:
    """The speed-up over concurrency 1 the schedule's rules allow for this order of keys, every
    record taking the same time: the bound no thread pool can beat (`streams.parallel`)."""
    schedule = KeyedSchedule(parse_records(event), concurrency)
    now, running = 0.0, []
    while True:
        while (position := schedule.next()) is not None:
            heapq.heappush(running, (now + 1.0, position))
        if not running:
            return len(event["Records"]) / now
        now, position = heapq.heappop(running)
        schedule.finished(position)


def _timed(run: Callable[[], Any]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):  # the metrics documents
        started = time.perf_counter()
        run()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    wait = args.wait_ms / 1000
    print(
        f"{args.records} records over {args.keys} keys, {args.wait_ms:g} ms per record "
        "(every timing is one whole batch, at least 0.5 s)"
    )
    print(
        f"{'shape':11} {'contender':22} {'records/s':>10} {'vs ours c=1':>12} "
        f"{'order violations':>17}"
    )
    verdicts = []
    for shape in ("uniform", "round-robin", "hot key"):
        event = make_event(args.records, args.keys, shape=shape)
        runs: list[tuple[str, tuple[float, int]]] = [
            ("ours, concurrency 1", ours(event, wait, 1)),
            *((f"ours, concurrency {n}", ours(event, wait, n)) for n in (8, 32, 64)),
            ("ours async, 32", ours_async(event, wait, 32)),
            ("Powertools", powertools(event, wait)),
            ("Powertools async", powertools_async(event, wait)),
        ]
        base = args.records / runs[0][1][0]
        rates = {}
        for name, (seconds, violations) in runs:
            rate = args.records / seconds
            rates[name] = rate
            print(f"{shape:11} {name:22} {rate:10,.0f} {rate / base:11.1f}x {violations:17,}")
        speedup = rates["ours, concurrency 32"] / base
        target = 4.0 if shape == "hot key" else 20.0
        verdicts.append(
            f"{shape}: concurrency 32 is {speedup:.1f}x concurrency 1 (target {target:g}x, "
            f"the schedule's ceiling {ceiling(event, 32):.1f}x): "
            + ("met" if speedup >= target else "NOT met")
        )
    for verdict in verdicts:
        print(verdict)


if __name__ == "__main__":
    main()
