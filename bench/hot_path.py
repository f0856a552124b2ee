"""The Lambda hot path: ours beside Powertools' BatchProcessor and a plain TypeDeserializer loop.

The same 10,000 MODIFY records of the worked example's items (both images), in events of at
most 6 MB and 1,000 records, go through each contender in turn, alternating, for several
rounds; the best round of each counts. The input is frozen out of the garbage collector's
scans first (gc.freeze), so each contender pays for its own allocations only. Two handlers,
each binding an image once:

- full: walks every value of both images;
- typical: reads the key and three attributes of the new image.

Also: decoding alone, our image decoder beside boto3's TypeDeserializer on the same images.

And a floor, which is no contender: the handler's own work with nothing else, the bound no
wrapper can beat. For *full*, the walk over images decoded before the clock starts; for
*typical*, the same four reads straight off the event's dicts, nothing decoded or wrapped.
Its ratio to Powertools is the most any library could reach on that handler.

    python bench/hot_path.py [--records N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import random
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from boto3.dynamodb.types import Binary, TypeDeserializer

from streams import StreamProcessor
from streams.deadletter import DeadLetter
from streams.records import Image

MAX_EVENT_BYTES = 6 * 1024 * 1024
MAX_EVENT_RECORDS = 1000
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Children/stream/2026-11-21T00:00:00.000"


def child_item(rng: random.Random, child: int, version: int) -> dict[str, Any]:
    return {
        "childId": {"S": f"c-{child:07d}"},
        "name": {"S": rng.choice(["Ada", "Grace", "Linus", "Alan", "Barbara"]) + f" {child}"},
        "status": {"S": rng.choice(["nice", "naughty"])},
        "region": {"S": rng.choice(["north", "south", "east", "west"])},
        "version": {"N": str(version)},
        "address": {
            "M": {
                "street": {"S": f"{rng.randint(1, 999)} Candy Cane Lane"},
                "city": {"S": rng.choice(["Oslo", "Lima", "Pune", "Perth"])},
                "postcode": {"S": f"{rng.randint(10000, 99999)}"},
                "country": {"S": rng.choice(["NO", "PE", "IN", "AU"])},
                "geo": {
                    "M": {
                        "lat": {"N": f"{rng.uniform(-90, 90):.6f}"},
                        "lon": {"N": f"{rng.uniform(-180, 180):.6f}"},
                    }
                },
            }
        },
    }


def make_records(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    records = []
    for n in range(count):
        child = n % 3000
        records.append(
            {
                "eventID": f"{n:032x}",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_795_000_000 + n // 100,
                    "Keys": {"childId": {"S": f"c-{child:07d}"}},
                    "OldImage": child_item(rng, child, n),
                    "NewImage": child_item(rng, child, n + 1),
                    "SequenceNumber": str(10**20 + n),
                    "SizeBytes": 400,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        )
    return records


def make_events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches as Lambda delivers them: at most 6 MB of payload and MAX_EVENT_RECORDS records."""
    events: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for record in records:
        record_size = len(json.dumps(record))
        if batch and (size + record_size > MAX_EVENT_BYTES or len(batch) == MAX_EVENT_RECORDS):
            events.append({"Records": batch})
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        events.append({"Records": batch})
    assert all(len(json.dumps(event)) <= MAX_EVENT_BYTES for event in events)
    return events


_LEAVES = frozenset({str, Decimal, bool, type(None), bytes, int, Binary})


def walk(image: Any) -> int:
    """Touches every value of an image, nested ones included (the 'full' handler's work).

    The same walk for every contender; returns how many leaves it saw.
    """
    leaves = 0
    stack = [image]
    while stack:
        value = stack.pop()
        if type(value) in _LEAVES:
            leaves += 1
        elif isinstance(value, Mapping):
            stack.extend(value.values())
        else:  # list or set
            stack.extend(value)
    return leaves


class NullSink:
    """Nothing is parked in this workload; the sink is here to satisfy the core's contract."""

    def park(self, letters: list[DeadLetter]) -> list[str | None]:
        raise AssertionError("the benchmark's records are all valid")


# --- contenders: (name, handler kind) -> callable(events) ---------------------------------------


def ours(kind: str) -> Callable[[list[dict[str, Any]]], None]:
    def full(record: Any) -> None:
        new, old = record.new_image, record.old_image
        walk(new)
        walk(old)

    def typical(record: Any) -> None:
        new = record.new_image
        _ = (record.keys["childId"], new["status"], new["region"], new["address"])

    processor = StreamProcessor(
        full if kind == "full" else typical,
        dead_letters=NullSink(),
        logger=Logger(service="bench-ours", stream=io.StringIO()),
        metrics=Metrics(namespace="Bench", service="bench"),
    )

    def run(events: list[dict[str, Any]]) -> None:
        for event in events:
            response = processor.process(event, None)
            assert response == {"batchItemFailures": []}

    return run


def powertools(kind: str) -> Callable[[list[dict[str, Any]]], None]:
    def full(record: Any) -> None:
        new, old = record.dynamodb.new_image, record.dynamodb.old_image
        walk(new)
        walk(old)

    def typical(record: Any) -> None:
        new = record.dynamodb.new_image
        _ = (record.dynamodb.keys["childId"], new["status"], new["region"], new["address"])

    processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
    handler = full if kind == "full" else typical

    def run(events: list[dict[str, Any]]) -> None:
        for event in events:
            response = process_partial_response(
                event=event, record_handler=handler, processor=processor, context=None
            )
            assert response == {"batchItemFailures": []}, response

    return run


def plain_loop(kind: str) -> Callable[[list[dict[str, Any]]], None]:
    deserialize = TypeDeserializer().deserialize

    def decode(image: Mapping[str, Any]) -> dict[str, Any]:
        return {name: deserialize(value) for name, value in image.items()}

    def run(events: list[dict[str, Any]]) -> None:
        for event in events:
            for raw in event["Records"]:
                data = raw["dynamodb"]
                if kind == "full":
                    walk(decode(data["NewImage"]))
                    walk(decode(data["OldImage"]))
                else:
                    new = decode(data["NewImage"])
                    keys = decode(data["Keys"])
                    _ = (keys["childId"], new["status"], new["region"], new["address"])

    return run


def floor(kind: str, events: list[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], None]:
    """The handler's own work and nothing else (see the module docstring)."""
    deserialize = TypeDeserializer().deserialize
    decoded = [
        tuple(
            {name: deserialize(value) for name, value in raw["dynamodb"][image].items()}
            for image in ("NewImage", "OldImage")
        )
        for event in events
        for raw in event["Records"]
    ]

    def full(_: list[dict[str, Any]]) -> None:
        for new, old in decoded:
            walk(new)
            walk(old)

    def typical(events: list[dict[str, Any]]) -> None:
        for event in events:
            for raw in event["Records"]:
                data = raw["dynamodb"]
                new = data["NewImage"]
                _ = (data["Keys"]["childId"], new["status"], new["region"], new["address"])

    return full if kind == "full" else typical


def decode_ours(records: list[dict[str, Any]]) -> None:
    for raw in records:
        dict(Image(raw["dynamodb"]["NewImage"]))


def decode_boto3(records: list[dict[str, Any]]) -> None:
    deserialize = TypeDeserializer().deserialize
    for raw in records:
        {name: deserialize(value) for name, value in raw["dynamodb"]["NewImage"].items()}


def best_rate(runs: dict[str, Callable[[], None]], count: int, rounds: int) -> dict[str, float]:
    """Records/s of each, alternating between them every round; the best round counts."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            with contextlib.redirect_stdout(io.StringIO()):  # EMF metrics lines
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
            best[name] = max(best[name], count / elapsed)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    records = make_records(args.records)
    events = make_events(records)
    # The input exists before any contender runs: keep the collector from rescanning it, so a
    # contender's time depends on its own allocations (a Lambda holds one event, not ten).
    gc.collect()
    gc.freeze()
    results: dict[str, Any] = {
        "records": args.records,
        "events": len(events),
        "largest_event_bytes": max(len(json.dumps(e)) for e in events),
    }
    for kind in ("full", "typical"):
        contenders = {
            "ours": ours(kind),
            "powertools": powertools(kind),
            "typedeserializer_loop": plain_loop(kind),
            "floor": floor(kind, events),
        }
        rates = best_rate(
            {name: (lambda run=run: run(events)) for name, run in contenders.items()},
            args.records,
            args.rounds,
        )
        results[kind] = {
            "records_per_second": {name: round(rate) for name, rate in rates.items()},
            "ours_vs_powertools": round(rates["ours"] / rates["powertools"], 2),
            "ours_vs_typedeserializer_loop": round(
                rates["ours"] / rates["typedeserializer_loop"], 2
            ),
            "floor_vs_powertools": round(rates["floor"] / rates["powertools"], 2),
        }
    decode = best_rate(
        {"ours": lambda: decode_ours(records), "typedeserializer": lambda: decode_boto3(records)},
        args.records,
        args.rounds,
    )
    results["decode_new_image"] = {
        "images_per_second": {name: round(rate) for name, rate in decode.items()},
        "ours_vs_typedeserializer": round(decode["ours"] / decode["typedeserializer"], 2),
    }

    if args.json:
        print(json.dumps(results))
        return 0
    print(
        f"{args.records:,} records in {len(events)} events "
        f"(largest {results['largest_event_bytes'] / 1e6:.1f} MB), best of {args.rounds} rounds"
    )
    for kind, target in (("full", 3), ("typical", 10)):
        rates = results[kind]["records_per_second"]
        print(f"\n{kind} handler (records/s)")
        for name, rate in rates.items():
            print(f"  {name:<24}{rate:>12,}")
        print(
            f"  ours / powertools        {results[kind]['ours_vs_powertools']:>11}x"
            f"  (target {target}x)"
        )
        print(f"  ours / plain loop        {results[kind]['ours_vs_typedeserializer_loop']:>11}x")
        print(
            f"  floor / powertools       {results[kind]['floor_vs_powertools']:>11}x"
            "  (the most any library could reach)"
        )
    d = results["decode_new_image"]
    print("\ndecoding the new image (images/s)")
    for name, rate in d["images_per_second"].items():
        print(f"  {name:<24}{rate:>12,}")
    print(f"  ours / TypeDeserializer  {d['ours_vs_typedeserializer']:>11}x  (target 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
