"""`streams backfill`: every item the source table holds now, through the function's handler.

Run it while `streams run` follows the stream from TRIM_HORIZON (the order README's "Backfill"
states as a contract): each item is offered as an INSERT record whose sequence number is below
any real one, in the function's own warm worker processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streams.arn import Arn
from streams.cli.common import add_parameter_overrides, sigterm_as_interrupt
from streams.cli.local import deploy_to_local_endpoint
from streams.deadletter import SqsDeadLetterQueue
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.local.backfill import Backfill, BackfillSettings, SegmentPositions
from streams.local.endpoint import local_session
from streams.local.run import LocalMapping
from streams.local.template import DEFAULT_TEMPLATE
from streams.mapping.function.interpreter import resolve_interpreter
from streams.mapping.function.pool import WorkerPool

#: Items per segment: DynamoDB's parallel scan guidance is a segment per ~2 GB; locally, a few.
_ITEMS_PER_SEGMENT = 5000
_MAX_DEFAULT_SEGMENTS = 8


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="offer every item the source table holds now to the function, as INSERT records",
        description="Scan the function's DynamoDB source table in parallel and offer each item "
        "to its handler (in warm worker processes, as `streams run`) as an INSERT record whose "
        "sequence number is below any real one. Start `streams run` first: see README, Backfill.",
    )
    parser.add_argument(
        "--template", default=str(DEFAULT_TEMPLATE), help=f"SAM template ({DEFAULT_TEMPLATE})"
    )
    parser.add_argument("--function", metavar="LOGICAL_ID", help="the function to backfill")
    parser.add_argument("--segments", type=int, help="parallel scan segments (default: by size)")
    parser.add_argument(
        "--max-read-share",
        type=float,
        default=0.5,
        help="share of the table's provisioned read capacity the scan may use (0.5)",
    )
    parser.add_argument(
        "--read-rate",
        type=float,
        help="read units per second for an on-demand table (default: unpaced)",
    )
    parser.add_argument("--consistent-read", action="store_true", help="strongly consistent scan")
    parser.add_argument("--state", type=Path, help="file keeping segment positions (resumable)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--stack-name", help="stack (default: the recorded one, else streams-local)"
    )
    add_parameter_overrides(parser)
    parser.add_argument("--region", help="region (default: the endpoint's, else us-east-1)")
    parser.set_defaults(func=_backfill)


def _backfill(args: argparse.Namespace) -> int:
    if not 0 < args.max_read_share <= 1:
        raise UserError(f"--max-read-share must be in (0, 1], got {args.max_read_share}")
    messages = sys.stderr if args.json else sys.stdout
    stack = deploy_to_local_endpoint(
        args,
        messages=messages,
        refusal="no local endpoint: streams backfill runs against a local endpoint only "
        "(--invoke deployed is not built yet); start `streams local up` or set AWS_ENDPOINT_URL",
    )
    mapping = LocalMapping(stack, args.function, region=args.region)
    sources = [s for s in mapping.function.event_sources if s.event_source == "aws:dynamodb"]
    if len(sources) != 1:
        raise UserError(
            f"function {mapping.function.logical_id} has {len(sources)} DynamoDB stream event "
            "sources: backfill needs exactly one"
        )
    stream_arn = sources[0].event_source_arn
    table_name = Arn.parse(stream_arn).resource.split("/")[1]
    session = local_session(mapping.region)
    dynamodb = session.client(
        "dynamodb", endpoint_url=service_endpoint("dynamodb", mapping.endpoint_url)
    )
    table = dynamodb.describe_table(TableName=table_name)["Table"]
    key_names = [key["AttributeName"] for key in table["KeySchema"]]
    segments = args.segments or min(
        _MAX_DEFAULT_SEGMENTS, max(1, table.get("ItemCount", 0) // _ITEMS_PER_SEGMENT + 1)
    )
    provisioned = table.get("ProvisionedThroughput", {}).get("ReadCapacityUnits", 0)
    rate = provisioned * args.max_read_share if provisioned else args.read_rate
    environment = mapping.function_spec.environment
    # The function's own dead-letter queue (its environment names it), as on the stream.
    named = SqsDeadLetterQueue.from_environment(environment)
    sink = SqsDeadLetterQueue(
        named.queue_url,
        bucket=named.bucket,
        sqs=session.client("sqs", endpoint_url=service_endpoint("sqs", mapping.endpoint_url)),
        s3=session.client("s3", endpoint_url=service_endpoint("s3", mapping.endpoint_url)),
    )
    positions = SegmentPositions(args.state, segments)
    spec = mapping.function_spec
    per_segment = max(1, table.get("ItemCount", 0) // segments)
    with (
        WorkerPool(spec, resolve_interpreter(spec.runtime, spec.code_uri)) as workers,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=None,
            disable=args.json,
        ) as progress,
        sigterm_as_interrupt(),
    ):
        tasks = [progress.add_task(f"segment {n}", total=per_segment) for n in range(segments)]
        backfill = Backfill(
            dynamodb=dynamodb,
            table_name=table_name,
            key_names=key_names,
            stream_arn=stream_arn,
            region=mapping.region,
            invoke=workers,
            sink=sink,
            settings=BackfillSettings(
                segments=segments, read_units_per_second=rate, consistent_read=args.consistent_read
            ),
            positions=positions,
            function_name=spec.name,
            on_page=lambda segment, items: progress.advance(tasks[segment], items),
        )
        try:
            summary = backfill.run()
        except KeyboardInterrupt:
            print("streams: stopped (Ctrl-C): rerun with the same --state to go on", file=messages)
            return 130
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print(
            f"offered {summary.offered}, applied {summary.applied}, parked {summary.parked}, "
            f"retried {summary.retried} in {summary.seconds:.1f} s",
            file=messages,
        )
    return 0
