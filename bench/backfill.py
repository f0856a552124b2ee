"""`streams backfill` beside the loop a user would write, over the same table, same run.

moto's server runs in its own process on 127.0.0.1. Two handlers:

- `example` (the default): template.yaml's worked example, which makes one conditional write
  per item into its delivery table (on moto, so moto's one process is the ceiling of both sides);
- `downstream`: a handler that waits 5 ms per record (a call to another service), in a
  template of the bench's own; nothing it does goes through moto.

For each item shape, the source table is filled with N items, and they are offered twice, by:

- a plain loop: one `Scan` paginator, each page's items made into Lambda-shaped INSERT records
  (`synthetic_record`, so both sides hand the handler the same event) and given to the worked
  example's `lambda_handler` in this process, 100 records an event, one page after another;
- ours: `streams backfill`'s core as the command runs it: a parallel scan (4 segments), the
  handler in the function's warm worker processes, batches of 100, retries and parking on.

Shapes: `child` (the worked example's item, ~250 B), `wide` (plus 60 string attributes, ~3 KB),
`large` (plus a 30 KB note). With `example`, both sides must leave every item in the delivery
table (checked by a scan after the clock stops; emptied in between). Each figure is items/s;
the ratio is ours / the plain loop. The worker pool's start is inside ours' time.

    python bench/backfill.py [--handler example|downstream] [--items N] [--segments N]
                             [--shapes child,wide,large] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.local.backfill import (  # noqa: E402
    BackfillSettings,
    BackfillTarget,
    SegmentPositions,
    dynamodb_stream_of,
    function_backfill,
    synthetic_record,
)
from streams.local.endpoint import EndpointProcess, local_session  # noqa: E402
from streams.local.run import LocalMapping  # noqa: E402
from streams.local.stack import deploy_template  # noqa: E402
from streams.mapping.invoke import LambdaContext  # noqa: E402
from streams.writer import TableWriter  # noqa: E402

BATCH = 100
WAIT_SECONDS = 0.005

DOWNSTREAM_TEMPLATE = f"""\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  SourceTable:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{{AttributeName: childId, AttributeType: S}}]
      KeySchema: [{{AttributeName: childId, KeyType: HASH}}]
      StreamSpecification: {{StreamViewType: NEW_AND_OLD_IMAGES}}
  DeadLetters:
    Type: AWS::SQS::Queue
  Downstream:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Handler: downstream.lambda_handler
      Runtime: python{sys.version_info.major}.{sys.version_info.minor}
      Timeout: 60
      Environment:
        Variables:
          DEAD_LETTER_QUEUE_URL: !Ref DeadLetters
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt SourceTable.StreamArn
            StartingPosition: TRIM_HORIZON
Outputs:
  SourceTableName:
    Value: !Ref SourceTable
"""
DOWNSTREAM_CODE = f"""\
import time


def lambda_handler(event, context):
    for record in event["Records"]:
        time.sleep({WAIT_SECONDS})  # a call to another service
    return {{"batchItemFailures": []}}
"""


def item(shape: str, number: int) -> dict[str, Any]:
    child: dict[str, Any] = {
        "childId": f"child-{number:07d}",
        "version": 1,
        "name": "Ada",
        "status": "nice" if number % 3 else "naughty",
        "region": "north",
        "address": {"street": f"{number % 97} Birch Lane", "city": "Tromsø", "country": "NO"},
    }
    if shape == "wide":
        child |= {f"field{n:02d}": f"value {n} of child {number}" for n in range(60)}
    elif shape == "large":
        child["note"] = "x" * 30_000
    return child


def fill(client: Any, table: str, shape: str, items: int) -> None:
    with TableWriter(table, client=client) as writer:
        for number in range(items):
            writer.put(item(shape, number))


def empty(client: Any, table: str) -> None:
    for page in client.get_paginator("scan").paginate(
        TableName=table, ProjectionExpression="childId"
    ):
        for key in page["Items"]:
            client.delete_item(TableName=table, Key=key)


def count(client: Any, table: str) -> int:
    return sum(
        page["Count"]
        for page in client.get_paginator("scan").paginate(TableName=table, Select="COUNT")
    )


def plain_loop(
    client: Any,
    target: BackfillTarget,
    handler: Callable[[dict[str, Any], Any], Any],
    function: str,
) -> None:
    """What a user writes: scan page by page, call the handler with Lambda-shaped events."""
    for page in client.get_paginator("scan").paginate(TableName=target.table_name):
        records = [
            synthetic_record(
                raw,
                target.key_names,
                stream_arn=target.stream_arn,
                region="us-east-1",
                now=time.time(),
            )
            for raw in page["Items"]
        ]
        for start in range(0, len(records), BATCH):
            context = LambdaContext(
                function_name=function,
                aws_request_id=f"bench-{start}",
                invoked_function_arn=f"arn:aws:lambda:us-east-1:123456789012:function:{function}",
                deadline=time.monotonic() + 60,
            )
            handler({"Records": records[start : start + BATCH]}, context)


@dataclass(frozen=True)
class Bench:
    client: Any
    session: Any
    mapping: LocalMapping
    stream_arn: str
    handler: Callable[[dict[str, Any], Any], Any]
    outputs: dict[str, str]


def measure(args: argparse.Namespace, shape: str, bench: Bench) -> dict[str, Any]:
    """Fill the source table with `shape`, then time the plain loop and ours over it."""
    client = bench.client
    source = bench.outputs["SourceTableName"]
    delivery = bench.outputs.get("DeliveryTableName")
    empty(client, source)
    fill(client, source, shape, args.items)
    target = BackfillTarget.of(client, bench.stream_arn)
    segments = args.segments or target.segments()

    if delivery is not None:
        empty(client, delivery)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its metrics (EMF lines)
        plain_loop(client, target, bench.handler, bench.mapping.function.logical_id)
    plain = time.perf_counter() - started
    plain_done = count(client, delivery) if delivery is not None else args.items

    if delivery is not None:
        empty(client, delivery)
    started = time.perf_counter()
    with function_backfill(
        bench.mapping,
        bench.session,
        target,
        settings=BackfillSettings(segments=segments),
        positions=SegmentPositions(None, segments),
    ) as backfill:
        summary = backfill.run()
    ours = time.perf_counter() - started
    ours_done = count(client, delivery) if delivery is not None else summary.applied
    return {
        "handler": args.handler,
        "shape": shape,
        "items": args.items,
        "segments": segments,
        "plain_items_per_s": round(args.items / plain, 1),
        "ours_items_per_s": round(args.items / ours, 1),
        "ratio": round(plain / ours, 2),
        "plain_done": plain_done,
        "ours_done": ours_done,
        "ours_parked": summary.parked,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handler", choices=("example", "downstream"), default="example")
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument(
        "--segments", type=int, help="(default: `streams backfill`'s, by the table's size)"
    )
    parser.add_argument("--shapes", default="child,wide,large")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with EndpointProcess(0) as endpoint, tempfile.TemporaryDirectory() as directory:
        if args.handler == "example":
            template, function = ROOT / "template.yaml", "ProcessorFunction"
        else:
            template, function = Path(directory) / "template.yaml", "Downstream"
            template.write_text(DOWNSTREAM_TEMPLATE)
            (Path(directory) / "downstream.py").write_text(DOWNSTREAM_CODE)
        stack = deploy_template(template, endpoint_url=endpoint.url)
        mapping = LocalMapping(stack, function)
        session = local_session(stack.region)
        client = session.client("dynamodb", endpoint_url=endpoint.url)
        stream_arn = dynamodb_stream_of(mapping.function)
        # The plain loop runs the handler in this process, with the function's environment.
        spec = mapping.function_spec
        os.environ.update(
            {
                **spec.environment,
                **spec.credentials,
                "AWS_ENDPOINT_URL": endpoint.url,
                "AWS_REGION": stack.region,
                "AWS_DEFAULT_REGION": stack.region,
                "POWERTOOLS_LOG_LEVEL": "ERROR",
            }
        )
        sys.path.insert(0, str(spec.code_uri))
        module, name = spec.handler.rsplit(".", 1)
        handler = getattr(importlib.import_module(module), name)

        for shape in args.shapes.split(","):
            row = measure(
                args, shape, Bench(client, session, mapping, stream_arn, handler, stack.outputs)
            )
            rows.append(row)
            if not args.json:
                print(
                    f"{args.handler:<10} {shape:<6} {args.items:>6,} items  plain loop "
                    f"{row['plain_items_per_s']:>7,.1f} items/s ({row['plain_done']:,} done)  "
                    f"ours, {row['segments']} segments {row['ours_items_per_s']:>7,.1f} items/s "
                    f"({row['ours_done']:,} done)  {row['ratio']:.2f}x",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
