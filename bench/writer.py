"""The same burst through streams' TableWriter and through boto3's batch_writer, in one run,
against simulated provisioned capacity; items per second and items missing afterwards for each.

    .venv/bin/python bench/writer.py [--items N] [--capacity WCU] [--outage S] [--rounds R] [--json]

moto's server runs in a child process on 127.0.0.1 (a free port), as a remote DynamoDB would: in
this process it would compete with the writers for the GIL. Each writer gets a fresh table and
its own capacity: a token bucket of `--capacity` write units per second holding `--burst` seconds
of them, in botocore hooks on that writer's client. A call gets as many of its writes as there are
tokens, and the rest come back in `UnprocessedItems` (they are cut from the request: not sent); a
call that finds no token is refused with ProvisionedThroughputExceededException at the HTTP layer,
so botocore's retry mode retries it as it would DynamoDB's. Refused writes take no capacity:
hammering does not pay. `--outage` takes all capacity away for a while, as when throttling lasts
longer than botocore's retries.
Both writers use clients with botocore's default configuration (`--retry-mode` sets
AWS_RETRY_MODE for both).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import BotoCoreError, ClientError

from streams.demo.generate import generate_updates
from streams.writer import TableWriter

BATCH_WRITE = "dynamodb.BatchWriteItem"
THROTTLED_BODY = json.dumps(
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded.",
    }
).encode()
SERVER = """
import logging, sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes it
server.stop()
"""


@dataclass(frozen=True)
class Result:
    writer: str
    seconds: float
    items_per_second: float
    missing: int
    calls: int
    throttled_calls: int
    unprocessed_writes: int
    error: str | None


class ProvisionedCapacity:
    """A table's provisioned write capacity: `rate` write units per second, at most `burst`
    seconds of them saved up. The bench's items are under 1 KB, so a write takes one unit.

    Decided for each HTTP attempt (botocore's retries included), as DynamoDB does: the attempt
    gets as many writes as there are tokens; the rest are cut from the request body before it is
    sent and come back in `UnprocessedItems`; an attempt that gets none is refused with
    ProvisionedThroughputExceededException.
    """

    def __init__(
        self, client: Any, table: str, *, rate: float, burst: float, outage: tuple[float, float]
    ) -> None:
        self.table = table
        self.rate = rate
        self.limit = rate * burst
        self.tokens = self.limit
        self.updated = time.monotonic()
        # No capacity at all from `outage[0]` to `outage[1]` seconds after the start.
        self.outage = (self.updated + outage[0], self.updated + outage[1])
        self.lock = threading.Lock()
        self.calls = self.throttled_calls = self.unprocessed_writes = 0
        client.meta.events.register(f"before-send.{BATCH_WRITE}", self._before_send)
        client.meta.events.register(f"after-call.{BATCH_WRITE}", self._after_call)

    def _take(self, wanted: int) -> int:
        with self.lock:
            now = time.monotonic()
            if self.outage[0] <= now < self.outage[1]:
                self.tokens = 0.0
            else:
                self.tokens = min(self.limit, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            granted = min(wanted, int(self.tokens))
            self.tokens -= granted
            self.calls += 1
            self.throttled_calls += granted == 0
            return granted

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        body = json.loads(request.body)
        writes = body["RequestItems"][self.table]
        granted = self._take(len(writes))
        if granted == 0:
            headers = {"content-type": "application/x-amz-json-1.0"}
            return AWSResponse(request.url, 400, headers, _Raw(THROTTLED_BODY))
        if granted < len(writes):
            body["RequestItems"][self.table] = writes[:granted]
            request.body = json.dumps(body).encode()
            request.headers["Content-Length"] = str(len(request.body))
            request.context["unprocessed"] = writes[granted:]
        else:
            request.context.pop("unprocessed", None)
        return None

    def _after_call(
        self, http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        unprocessed = context.get("unprocessed")
        if unprocessed and http_response.status_code == 200:
            with self.lock:
                self.unprocessed_writes += len(unprocessed)
            parsed.setdefault("UnprocessedItems", {}).setdefault(self.table, []).extend(unprocessed)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


def create_table(name: str) -> None:
    boto3.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )


def count_items(name: str) -> int:
    pages = boto3.client("dynamodb").get_paginator("scan").paginate(TableName=name, Select="COUNT")
    return sum(page["Count"] for page in pages)


def run_ours(items: list[dict[str, object]], args: argparse.Namespace, table: str) -> Result:
    client = boto3.client("dynamodb")
    create_table(table)
    capacity = ProvisionedCapacity(client, table, **capacity_settings(args))
    error = None
    started = time.monotonic()
    try:
        with TableWriter(table, client=client, senders=args.senders) as writer:
            for item in items:
                writer.put(item)
    except (ClientError, BotoCoreError) as failure:
        error = f"{type(failure).__name__}: {failure}"
    return result(
        "streams TableWriter",
        table=table,
        items=items,
        started=started,
        capacity=capacity,
        error=error,
    )


def run_batch_writer(
    items: list[dict[str, object]], args: argparse.Namespace, table: str
) -> Result:
    resource = boto3.resource("dynamodb").Table(table)
    create_table(table)
    capacity = ProvisionedCapacity(resource.meta.client, table, **capacity_settings(args))
    error = None
    started = time.monotonic()
    try:
        with resource.batch_writer() as batch:
            for item in items:
                batch.put_item(Item=item)
    except (ClientError, BotoCoreError) as failure:  # botocore gave up: the buffer is lost
        error = f"{type(failure).__name__}: {failure}"
    return result(
        "boto3 batch_writer",
        table=table,
        items=items,
        started=started,
        capacity=capacity,
        error=error,
    )


def capacity_settings(args: argparse.Namespace) -> dict[str, Any]:
    outage = (args.outage_after, args.outage_after + args.outage)
    return {"rate": args.capacity, "burst": args.burst, "outage": outage}


def result(
    writer: str,
    *,
    table: str,
    items: list[dict[str, object]],
    started: float,
    capacity: ProvisionedCapacity,
    error: str | None,
) -> Result:
    seconds = time.monotonic() - started
    written = count_items(table)
    return Result(
        writer=writer,
        seconds=round(seconds, 2),
        items_per_second=round(written / seconds, 1),
        missing=len(items) - written,
        calls=capacity.calls,
        throttled_calls=capacity.throttled_calls,
        unprocessed_writes=capacity.unprocessed_writes,
        error=error,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="items per writer and round")
    parser.add_argument("--capacity", type=float, default=1000, help="write units per second")
    parser.add_argument("--burst", type=float, default=1.0, help="seconds of capacity saved up")
    parser.add_argument("--senders", type=int, default=4, help="TableWriter's parallel senders")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, each writer in turn (medians reported)"
    )
    parser.add_argument(
        "--outage", type=float, default=0.0, help="seconds with no capacity at all (default 0)"
    )
    parser.add_argument(
        "--outage-after", type=float, default=2.0, help="when the outage starts (seconds)"
    )
    parser.add_argument(
        "--retry-mode",
        choices=["legacy", "standard", "adaptive"],
        help="botocore's retry mode for both writers (default: botocore's default)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    if args.retry_mode:
        os.environ["AWS_RETRY_MODE"] = args.retry_mode
    logging.basicConfig(level=logging.ERROR)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        endpoint = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        items = [
            update | {"childId": f"bench-{i:07d}"}
            for i, update in enumerate(generate_updates(args.items, seed=1))
        ]
        ours: list[Result] = []
        theirs: list[Result] = []
        for round_number in range(args.rounds):
            ours.append(run_ours(items, args, f"ours-{round_number}"))
            theirs.append(run_batch_writer(items, args, f"batch-writer-{round_number}"))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)

    summaries = [summarize(ours), summarize(theirs)]
    ratio = summaries[0]["items_per_second"] / summaries[1]["items_per_second"]
    workload = {
        "items": args.items,
        "capacity_wcu": args.capacity,
        "burst_seconds": args.burst,
        "outage_seconds": args.outage,
        "senders": args.senders,
        "rounds": args.rounds,
        "retry_mode": boto3.client("dynamodb").meta.config.retries["mode"],
        "endpoint": endpoint,
    }
    if args.json:
        rounds = {"ours": [asdict(r) for r in ours], "batch_writer": [asdict(r) for r in theirs]}
        report = {"workload": workload, "medians": summaries, "rounds": rounds}
        print(json.dumps(report | {"ratio": round(ratio, 3)}))
        return 0
    print(
        f"{args.items:,} items per writer into a table provisioned at {args.capacity:,.0f} WCU "
        f"({args.burst:g} s of burst"
        + (f", none for {args.outage:g} s after {args.outage_after:g} s" if args.outage else "")
        + f"), {args.rounds} rounds, botocore retry mode "
        f"{workload['retry_mode']}, moto at {endpoint} (child process)"
    )
    print(
        f"{'medians':22}{'items/s':>9}{'missing':>9}{'calls':>8}{'throttled':>11}{'unprocessed':>13}"
    )
    for summary in summaries:
        print(
            f"{summary['writer']:22}{summary['items_per_second']:>9,.0f}"
            f"{summary['missing']:>9,}{summary['calls']:>8,.0f}"
            f"{summary['throttled_calls']:>11,.0f}{summary['unprocessed_writes']:>13,.0f}"
        )
    for r in ours + theirs:
        if r.error:
            print(f"  {r.writer} raised {r.error}")
    print(
        f"ours / batch_writer: {ratio:.2f}x the throughput (each round: "
        + ", ".join(
            f"{a.items_per_second / b.items_per_second:.2f}x"
            for a, b in zip(ours, theirs, strict=True)
        )
        + ")"
    )
    return 0


def summarize(results: list[Result]) -> dict[str, Any]:
    """Medians over the rounds; `missing` is the total: one lost item anywhere counts."""
    return {
        "writer": results[0].writer,
        "items_per_second": statistics.median([r.items_per_second for r in results]),
        "missing": sum(r.missing for r in results),
        "calls": statistics.median([r.calls for r in results]),
        "throttled_calls": statistics.median([r.throttled_calls for r in results]),
        "unprocessed_writes": statistics.median([r.unprocessed_writes for r in results]),
    }


if __name__ == "__main__":
    sys.exit(main())
