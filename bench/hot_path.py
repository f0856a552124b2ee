"""The Lambda hot path on every shape of item image: ours beside Powertools' BatchProcessor.

Users' items are not one shape, so each shape gets its own event: strings only; numbers; maps
nested three deep; lists of maps; string, number and binary sets; binary; booleans and nulls;
a wide item (100 attributes); and a mixed item with all of these. Every record is a MODIFY with
both images, in events of --batch records (at most Lambda's 6 MB). Two handlers:

- full: walks every value of both images, nested ones included;
- typical: reads the key and three attributes of the new image (one of them a nested field
  where the shape has nesting).

Contenders, on the same events in the same run:

- ours: `StreamProcessor.process`;
- powertools: `process_partial_response` with `BatchProcessor(EventType.DynamoDBStreams)`, whose
  records are its `DynamoDBRecord` data class (images decoded by its TypeDeserializer);
- floor, which is no contender: the handler's own work with nothing else, the bound no wrapper
  can beat. For *full*, the walk over images decoded before the clock starts; for *typical*, the
  same four reads straight off the event's dicts, nothing decoded or wrapped.

Each timing repeats invocations on the shape's event until it has lasted --min-time seconds
of CPU time (timings of 50 ms swing twofold on a shared machine); the contenders alternate for
--rounds rounds and the best round counts. The event, parsed once, is frozen out of the garbage
collector (gc.freeze) before the clock starts, so each contender pays for the collections its
own allocations cause, not for where the runtime's parse of the event left the collector.

--gc measures that part instead: whole invocations as Lambda bills them (the runtime's json.loads
of a fresh event, the handler, freeing the event), CPU ms each, for ours and Powertools, each
also with the heap frozen out of the collector around the handler (gc.freeze and gc.unfreeze:
a lead that was measured and not adopted, see the README).

--decode times decoding without any batch core: every value of each new image, ours beside
boto3's TypeDeserializer.

    python bench/hot_path.py [--shapes a,b] [--batch N] [--rounds N] [--min-time S]
                             [--gc | --decode] [--json]
"""

from __future__ import annotations

import argparse
import base64
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
from aws_lambda_powertools.shared.dynamodb_deserializer import TypeDeserializer
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from boto3.dynamodb import types as boto3_types

from streams import StreamProcessor
from streams.deadletter import DeadLetter
from streams.records import Image

MAX_EVENT_BYTES = 6 * 1024 * 1024
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Items/stream/2026-11-21T00:00:00.000"

# Targets of issue 12, per run: ours / Powertools.
TARGET_EVERY_ROW = 1.0
TARGET_MIXED_FULL = 1.5
TARGET_TYPICAL = 4.0

Item = dict[str, Any]
Path = tuple[str | int, ...]

# --- shapes: attribute values as the stream delivers them ---------------------------------------

FIRST = ["Ada", "Grace", "Linus", "Alan", "Barbara", "Edsger", "Frances", "Ken"]
WORDS = ["candy", "cane", "lane", "sleigh", "reindeer", "snow", "gift", "list", "chimney"]


def s(value: str) -> dict[str, str]:
    return {"S": value}


def n(value: object) -> dict[str, str]:
    return {"N": str(value)}


def b(data: bytes) -> dict[str, str]:
    return {"B": base64.b64encode(data).decode()}


def m(value: Item) -> dict[str, Item]:
    return {"M": value}


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def strings(rng: random.Random, k: int) -> Item:
    return {
        "name": s(f"{rng.choice(FIRST)} {k}"),
        "email": s(f"user{k}@example.com"),
        "status": s(rng.choice(["nice", "naughty"])),
        "region": s(rng.choice(["north", "south", "east", "west"])),
        "city": s(rng.choice(["Oslo", "Lima", "Pune", "Perth"])),
        "street": s(f"{rng.randint(1, 999)} Candy Cane Lane"),
        "country": s(rng.choice(["NO", "PE", "IN", "AU"])),
        "note": s(sentence(rng, 12)),
        "updatedAt": s(f"2026-11-{rng.randint(1, 30):02d}T{rng.randint(0, 23):02d}:00:00Z"),
    }


def numbers(rng: random.Random, k: int) -> Item:
    return {
        "version": n(k),
        "count": n(rng.randint(0, 1000)),
        "balance": n(f"{rng.uniform(-1e6, 1e6):.2f}"),
        "score": n(f"{rng.uniform(0, 100):.4f}"),
        "lat": n(f"{rng.uniform(-90, 90):.6f}"),
        "lon": n(f"{rng.uniform(-180, 180):.6f}"),
        "big": n(rng.randint(10**30, 10**37)),
        "ratio": n(f"{rng.random():.10f}"),
        "expiresAt": n(1_795_000_000 + rng.randint(0, 10**6)),
    }


def nested_maps(rng: random.Random, k: int) -> Item:
    """Maps three deep: item > map > map > map."""
    geo = {"lat": n(f"{rng.uniform(-90, 90):.6f}"), "lon": n(f"{rng.uniform(-180, 180):.6f}")}
    return {
        "status": s(rng.choice(["nice", "naughty"])),
        "address": m(
            {
                "street": s(f"{rng.randint(1, 999)} Candy Cane Lane"),
                "city": s(rng.choice(["Oslo", "Lima", "Pune", "Perth"])),
                "geo": m({"point": m(geo), "source": s("gps")}),
            }
        ),
        "preferences": m(
            {
                "notify": m(
                    {
                        "channels": m({"email": s(f"user{k}@example.com"), "sms": s("+4700000")}),
                        "quiet": s("22-07"),
                    }
                ),
                "language": s(rng.choice(["en", "no", "es"])),
            }
        ),
    }


def lists_of_maps(rng: random.Random, k: int) -> Item:
    return {
        "status": s(rng.choice(["nice", "naughty"])),
        "gifts": {
            "L": [
                m({"sku": s(f"sku-{rng.randint(1, 9999):04d}"), "qty": n(rng.randint(1, 5))})
                for _ in range(4)
            ]
        },
        "visits": {
            "L": [
                m({"at": s(f"2026-12-{day:02d}"), "by": s(rng.choice(FIRST))})
                for day in range(1, 4)
            ]
        },
    }


def sets(rng: random.Random, k: int) -> Item:
    return {
        "tags": {"SS": rng.sample(WORDS, 5)},
        "colours": {"SS": rng.sample(["red", "green", "gold", "white", "blue"], 3)},
        "scores": {"NS": [str(v) for v in rng.sample(range(1000), 5)]},
        "sizes": {"NS": [f"{v}.5" for v in rng.sample(range(100), 4)]},
        "digests": {"BS": [base64.b64encode(rng.randbytes(16)).decode() for _ in range(3)]},
    }


def binary(rng: random.Random, k: int) -> Item:
    return {
        "token": b(rng.randbytes(16)),
        "hash": b(rng.randbytes(32)),
        "iv": b(rng.randbytes(12)),
        "signature": b(rng.randbytes(64)),
        "thumbnail": b(rng.randbytes(300)),
    }


def booleans_and_nulls(rng: random.Random, k: int) -> Item:
    item: Item = {f"flag{i}": {"BOOL": rng.random() < 0.5} for i in range(8)}
    item.update({f"unset{i}": {"NULL": True} for i in range(3)})
    return item


def wide(rng: random.Random, k: int) -> Item:
    """100 attributes (with the key): strings, numbers and a few booleans."""
    item: Item = {}
    for i in range(99):
        if i % 3 == 0:
            item[f"a{i:02d}"] = s(rng.choice(WORDS))
        elif i % 3 == 1:
            item[f"a{i:02d}"] = n(rng.randint(0, 10**6))
        else:
            item[f"a{i:02d}"] = {"BOOL": rng.random() < 0.5} if i % 9 == 2 else s(f"v{i}-{k}")
    return item


def mixed(rng: random.Random, k: int) -> Item:
    """All of the above in one item."""
    item = strings(rng, k)
    for part in (numbers, nested_maps, lists_of_maps, sets):
        item.update(part(rng, k))
    item["thumbnail"] = b(rng.randbytes(200))
    item["token"] = b(rng.randbytes(16))
    item["active"] = {"BOOL": rng.random() < 0.5}
    item["archived"] = {"BOOL": False}
    item["deletedAt"] = {"NULL": True}
    return item


# name -> (item maker, the typical handler's three reads as paths into the new image)
SHAPES: dict[str, tuple[Callable[[random.Random, int], Item], tuple[Path, Path, Path]]] = {
    "strings": (strings, (("status",), ("region",), ("email",))),
    "numbers": (numbers, (("version",), ("balance",), ("score",))),
    "nested-maps": (nested_maps, (("status",), ("address", "city"), ("address", "geo", "point"))),
    "lists-of-maps": (lists_of_maps, (("status",), ("gifts",), ("visits", 0, "at"))),
    "sets": (sets, (("tags",), ("scores",), ("digests",))),
    "binary": (binary, (("token",), ("hash",), ("iv",))),
    "booleans-nulls": (booleans_and_nulls, (("flag0",), ("flag5",), ("unset1",))),
    "wide": (wide, (("a03",), ("a49",), ("a95",))),
    "mixed": (mixed, (("status",), ("balance",), ("address", "geo", "point"))),
}


def make_event(shape: str, records: int) -> bytes:
    """One event of `records` MODIFY records of the shape, as Lambda delivers it (JSON)."""
    make_item, _ = SHAPES[shape]
    rng = random.Random(shape)
    batch: list[Item] = []
    for k in range(records):
        key = f"item-{k:07d}"
        old, new = make_item(rng, k), make_item(rng, k)
        old["id"] = new["id"] = s(key)
        batch.append(
            {
                "eventID": f"{k:032x}",
                "eventName": "MODIFY",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": STREAM_ARN,
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_795_000_000 + k // 100,
                    "Keys": {"id": s(key)},
                    "NewImage": new,
                    "OldImage": old,
                    "SequenceNumber": str(10**20 + k),
                    "SizeBytes": 400,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        )
    body = json.dumps({"Records": batch}).encode()
    if len(body) > MAX_EVENT_BYTES:
        raise SystemExit(f"{shape}: {records} records are {len(body):,} bytes, over Lambda's 6 MB")
    return body


# --- the handlers' own work, the same for every contender -------------------------------------

_LEAVES = frozenset({str, Decimal, bool, type(None), bytes, boto3_types.Binary})


def walk(image: Any) -> int:
    """Touches every value of an image, nested ones included; returns how many leaves it saw."""
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


def read(image: Any, path: Path) -> Any:
    value = image[path[0]]
    for step in path[1:]:
        value = value[step]  # type: ignore[index]
    return value


def read_raw(image: Mapping[str, Any], path: Path) -> Any:
    """The same read on the event's own dicts: through each map's or list's type key."""
    value = image[path[0]]
    for step in path[1:]:
        ((_, inner),) = value.items()
        value = inner[step]
    return value


class NullSink:
    """Nothing is parked in this workload; the sink is here to satisfy the core's contract."""

    def park(self, letters: list[DeadLetter]) -> list[str | None]:
        raise AssertionError("the benchmark's records are all valid")


# --- contenders: (kind, reads) -> callable(event) ----------------------------------------------

Run = Callable[[dict[str, Any]], None]


def ours(kind: str, reads: tuple[Path, Path, Path]) -> Run:
    first, second, third = reads

    def full(record: Any) -> None:
        walk(record.new_image)
        walk(record.old_image)

    def typical(record: Any) -> None:
        new = record.new_image
        _ = (record.keys["id"], read(new, first), read(new, second), read(new, third))

    processor = StreamProcessor(
        full if kind == "full" else typical,
        dead_letters=NullSink(),
        logger=Logger(service="bench-ours", stream=io.StringIO()),
        metrics=Metrics(namespace="Bench", service="bench"),
    )

    def run(event: dict[str, Any]) -> None:
        response = processor.process(event, None)
        assert response == {"batchItemFailures": []}

    return run


def powertools(kind: str, reads: tuple[Path, Path, Path]) -> Run:
    first, second, third = reads

    def full(record: Any) -> None:
        dynamodb = record.dynamodb
        walk(dynamodb.new_image)
        walk(dynamodb.old_image)

    def typical(record: Any) -> None:
        dynamodb = record.dynamodb
        new = dynamodb.new_image
        _ = (dynamodb.keys["id"], read(new, first), read(new, second), read(new, third))

    processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
    handler = full if kind == "full" else typical

    def run(event: dict[str, Any]) -> None:
        response = process_partial_response(
            event=event, record_handler=handler, processor=processor, context=None
        )
        assert response == {"batchItemFailures": []}, response

    return run


def floor(kind: str, reads: tuple[Path, Path, Path], body: bytes) -> Run:
    """The handler's own work and nothing else (see the module docstring)."""
    first, second, third = reads
    deserialize = TypeDeserializer().deserialize
    decoded = [
        tuple(
            {name: deserialize(value) for name, value in raw["dynamodb"][image].items()}
            for image in ("NewImage", "OldImage")
        )
        for raw in json.loads(body)["Records"]
    ]

    def full(_: dict[str, Any]) -> None:
        for new, old in decoded:
            walk(new)
            walk(old)

    def typical(event: dict[str, Any]) -> None:
        for raw in event["Records"]:
            data = raw["dynamodb"]
            new = data["NewImage"]
            _ = (
                data["Keys"]["id"],
                read_raw(new, first),
                read_raw(new, second),
                read_raw(new, third),
            )

    return full if kind == "full" else typical


def with_the_freeze(run: Run) -> Run:
    """The rejected lead (--gc only): the heap frozen out of the collector around the batch."""

    def wrapped(event: dict[str, Any]) -> None:
        gc.freeze()
        try:
            run(event)
        finally:
            gc.unfreeze()

    return wrapped


# --- timing ---------------------------------------------------------------------------------------

Clock = Callable[[], float]
# CPU time of this process: the bench is single-threaded and does no I/O, so on an idle machine
# this is the wall time; on a shared one it leaves out the time other processes hold the CPU.
clock: Clock = time.process_time


def rate(run: Run, event: dict[str, Any], records: int, min_time: float) -> float:
    """Records/s over invocations on the same event, repeated until `min_time` seconds in all."""
    elapsed = 0.0
    handled = 0
    while elapsed < min_time:
        start = clock()
        run(event)
        elapsed += clock() - start
        handled += records
    return handled / elapsed


def best_rates(
    runs: dict[str, Run], event: dict[str, Any], records: int, rounds: int, min_time: float
) -> dict[str, float]:
    """Records/s of each contender, alternating between them every round; the best round counts."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            with contextlib.redirect_stdout(io.StringIO()):  # EMF metrics lines
                best[name] = max(best[name], rate(run, event, records, min_time))
    return best


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shape in args.shapes:
        body = make_event(shape, args.batch)
        _, reads = SHAPES[shape]
        event = json.loads(body)
        # The event and everything else alive now are moved out of the collector's reach, so
        # that each contender pays for the collections its own allocations cause, and not for
        # where the runtime's parse left the collector's thresholds (see --gc).
        gc.collect()
        gc.freeze()
        for kind in ("full", "typical"):
            contenders = {
                "ours": ours(kind, reads),
                "powertools": powertools(kind, reads),
                "floor": floor(kind, reads, body),
            }
            rates = best_rates(contenders, event, args.batch, args.rounds, args.min_time)
            ratio = rates["ours"] / rates["powertools"]
            target = max(
                TARGET_EVERY_ROW,
                TARGET_TYPICAL if kind == "typical" else 1.0,
                TARGET_MIXED_FULL if (shape, kind) == ("mixed", "full") else 1.0,
            )
            row: dict[str, Any] = {
                "shape": shape,
                "handler": kind,
                "event_bytes": len(body),
                "records_per_second": {name: round(value) for name, value in rates.items()},
                "ours_vs_powertools": round(ratio, 2),
                "floor_vs_powertools": round(rates["floor"] / rates["powertools"], 2),
                "target": target,
                "met": ratio >= target,
            }
            rows.append(row)
            if not args.json:
                print_row(row)
        gc.unfreeze()
    return rows


def decoding(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--decode: decoding without the batch core, every value of each new image (nested ones
    too, by the same walk), ours beside boto3's TypeDeserializer."""
    deserialize = boto3_types.TypeDeserializer().deserialize
    rows: list[dict[str, Any]] = []
    for shape in args.shapes:
        body = make_event(shape, args.batch)
        images = [raw["dynamodb"]["NewImage"] for raw in json.loads(body)["Records"]]
        # boto3's deserializer takes binary as bytes (its client decodes the base64 while parsing
        # a response): given bytes here, before the clock, boto3 is not charged for base64; ours is.
        for_boto3 = [{name: as_boto3(value) for name, value in image.items()} for image in images]

        def ours(_: dict[str, Any], images: list[Item] = images) -> None:
            for image in images:
                walk(Image(image))

        def boto3(_: dict[str, Any], images: list[Item] = for_boto3) -> None:
            for image in images:
                walk({name: deserialize(value) for name, value in image.items()})

        rates = best_rates(
            {"ours": ours, "boto3": boto3}, {}, len(images), args.rounds, args.min_time
        )
        row = {
            "shape": shape,
            "images_per_second": {name: round(value) for name, value in rates.items()},
            "ours_vs_boto3": round(rates["ours"] / rates["boto3"], 2),
        }
        rows.append(row)
        if not args.json:
            print(
                f"{shape:<15}{row['images_per_second']['ours']:>10,}"
                f"{row['images_per_second']['boto3']:>12,}{row['ours_vs_boto3']:>8.2f}x",
                flush=True,
            )
    return rows


def as_boto3(value: Any) -> Any:
    """An attribute value as boto3's low-level client returns it: binary as bytes."""
    ((tag, inner),) = value.items()
    if tag == "B":
        return {"B": base64.b64decode(inner)}
    if tag == "BS":
        return {"BS": [base64.b64decode(member) for member in inner]}
    if tag == "M":
        return {"M": {name: as_boto3(member) for name, member in inner.items()}}
    if tag == "L":
        return {"L": [as_boto3(member) for member in inner]}
    return value


def invocations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--gc: whole invocations on freshly parsed events, with and without the freeze lead."""
    rows: list[dict[str, Any]] = []
    for shape in args.shapes:
        body = make_event(shape, args.batch)
        _, reads = SHAPES[shape]
        for kind in ("full", "typical"):
            contenders = {
                "ours": ours(kind, reads),
                "ours_frozen": with_the_freeze(ours(kind, reads)),
                "powertools": powertools(kind, reads),
                "powertools_frozen": with_the_freeze(powertools(kind, reads)),
            }
            results = {
                name: dict.fromkeys(("handler", "total", "full"), 0.0) for name in contenders
            }
            for _ in range(args.rounds):
                for name, run in contenders.items():
                    with contextlib.redirect_stdout(io.StringIO()):
                        measured = invoke(run, body, args.min_time)
                    best = results[name]
                    if not best["total"] or measured["total"] < best["total"]:
                        results[name] = measured
            row = {"shape": shape, "handler": kind, "ms_per_invocation": results}
            rows.append(row)
            if not args.json:
                print_invocations(row)
    return rows


FULL_COLLECTIONS: list[int] = []


def _count_full_collections(phase: str, info: dict[str, Any]) -> None:
    if phase == "stop" and info["generation"] == 2:
        FULL_COLLECTIONS.append(1)


def invoke(run: Run, body: bytes, min_time: float) -> dict[str, float]:
    """Mean CPU ms per invocation as Lambda bills it: the runtime's parse of a fresh event, the
    handler, and freeing the event; at least `min_time` seconds and 10 invocations."""
    handler = total = 0.0
    count = 0
    FULL_COLLECTIONS.clear()
    gc.callbacks.append(_count_full_collections)
    try:
        while total < min_time or count < 10:
            start = clock()
            event = json.loads(body)
            handler_start = clock()
            run(event)
            handler_end = clock()
            del event
            end = clock()
            handler += handler_end - handler_start
            total += end - start
            count += 1
    finally:
        gc.callbacks.remove(_count_full_collections)
    return {
        "handler": round(1000 * handler / count, 2),
        "total": round(1000 * total / count, 2),
        "full": round(len(FULL_COLLECTIONS) / count, 2),
    }


HEADER = (
    f"{'shape':<15}{'handler':<9}{'ours':>10}{'powertools':>12}{'floor':>11}"
    f"{'ratio':>8}{'target':>8}  met"
)


def print_row(row: dict[str, Any]) -> None:
    rates = row["records_per_second"]
    print(
        f"{row['shape']:<15}{row['handler']:<9}{rates['ours']:>10,}{rates['powertools']:>12,}"
        f"{rates['floor']:>11,}{row['ours_vs_powertools']:>7.2f}x{row['target']:>7.1f}x  "
        f"{'pass' if row['met'] else 'FAIL'}",
        flush=True,
    )


INVOCATION_HEADER = f"{'shape':<15}{'handler':<9}" + "".join(
    f"{name:>27}" for name in ("ours", "ours + freeze", "powertools", "pt + freeze")
)


def print_invocations(row: dict[str, Any]) -> None:
    cells = "".join(
        f"{m['total']:>9.1f} ({m['handler']:>6.1f}, {m['full']:>4.2f})"
        for m in row["ms_per_invocation"].values()
    )
    print(f"{row['shape']:<15}{row['handler']:<9}{cells}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes",
        type=lambda text: text.split(","),
        default=list(SHAPES),
        help=f"comma-separated, of: {', '.join(SHAPES)}",
    )
    parser.add_argument("--batch", type=int, default=1000, help="records per event")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timing")
    parser.add_argument(
        "--gc", action="store_true", help="whole invocations on fresh events, with the freeze"
    )
    parser.add_argument(
        "--decode", action="store_true", help="decoding alone: ours beside boto3's deserializer"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    unknown = set(args.shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes: {', '.join(sorted(unknown))}")

    if args.decode:
        if not args.json:
            print(f"images/s, decoding and walking each new image of {args.batch:,} records")
            print(f"{'shape':<15}{'ours':>10}{'boto3':>12}{'ratio':>8}")
        rows = decoding(args)
        if args.json:
            print(json.dumps({"batch": args.batch, "rounds": args.rounds, "rows": rows}))
        return 0

    if args.gc:
        if not args.json:
            print(
                f"CPU ms per invocation of {args.batch:,} records: the runtime's parse of a fresh "
                "event, the handler and freeing the event (in brackets: the handler alone, and "
                f"full collections per invocation); best of {args.rounds} rounds"
            )
            print(INVOCATION_HEADER)
        rows = invocations(args)
        if args.json:
            print(json.dumps({"batch": args.batch, "rounds": args.rounds, "rows": rows}))
        return 0

    if not args.json:
        print(
            f"records/s (CPU time), events of {args.batch:,} records, "
            f"best of {args.rounds} rounds of at least {args.min_time} s each"
        )
        print(HEADER)
    rows = measure(args)
    met = all(row["met"] for row in rows)
    if args.json:
        print(json.dumps({"batch": args.batch, "rounds": args.rounds, "rows": rows, "met": met}))
        return 0
    print(
        f"targets (ours / Powertools, per run): at least {TARGET_EVERY_ROW}x on every row, "
        f"{TARGET_MIXED_FULL}x on the mixed full walk, {TARGET_TYPICAL}x on every typical read: "
        f"{'all met' if met else 'NOT all met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
