"""`streams backfill`: every item the source table holds now, through the function's handler.

Run it while the stream is followed from TRIM_HORIZON (`streams run` locally; the deployed
event source mapping on AWS): the order README's "Backfill" states as a contract. Each item is
offered as an INSERT record whose sequence number is below any real one, in the function's own
warm worker processes (`--invoke local`, against the local endpoint) or to the deployed
function with Lambda's Invoke (`--invoke deployed`, against AWS or any endpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import boto3
from botocore.config import Config
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streams.cli.common import add_parameter_overrides, sigterm_as_interrupt
from streams.cli.local import deploy_to_local_endpoint
from streams.deadletter import SqsDeadLetterQueue
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.local.backfill import (
    Backfill,
    BackfillSettings,
    BackfillSummary,
    BackfillTarget,
    FilePositions,
    SegmentPositions,
    dynamodb_stream_of,
    function_backfill,
    local_positions,
)
from streams.local.endpoint import local_session
from streams.local.run import LocalMapping
from streams.local.template import DEFAULT_TEMPLATE
from streams.ops.deployed import DeployedFunction, DeployedSource

OnPage = Callable[[int, int], None]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="offer every item the source table holds now to the function, as INSERT records",
        description="Scan the function's DynamoDB source table in parallel and offer each item "
        "to its handler as an INSERT record whose sequence number is below any real one: in "
        "warm worker processes, as `streams run` (--invoke local, the default), or to the "
        "deployed function with Lambda's Invoke (--invoke deployed --function-name NAME). "
        "Start following the stream first: see README, Backfill.",
    )
    parser.add_argument(
        "--invoke",
        choices=("local", "deployed"),
        default="local",
        help="where the handler runs: the local endpoint's stack (local) or the deployed "
        "function (deployed)",
    )
    parser.add_argument(
        "--template",
        default=str(DEFAULT_TEMPLATE),
        help=f"local: SAM template ({DEFAULT_TEMPLATE})",
    )
    parser.add_argument("--function", metavar="LOGICAL_ID", help="local: the function")
    parser.add_argument(
        "--function-name", metavar="NAME", help="deployed: the function's name or ARN"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="deployed: invocations in flight at most (default: one per segment)",
    )
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
    parser.add_argument(
        "--state",
        type=Path,
        help="file keeping segment positions (default: the local mapping's state table; "
        "deployed: none, so pass one to make a backfill resumable)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget kept positions: offer every item again"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--stack-name", help="local: stack (default: the recorded one, else streams-local)"
    )
    add_parameter_overrides(parser)
    parser.add_argument("--region", help="region (default: the endpoint's, else us-east-1)")
    parser.set_defaults(func=_backfill)


def _backfill(args: argparse.Namespace) -> int:
    if not 0 < args.max_read_share <= 1:
        raise UserError(f"--max-read-share must be in (0, 1], got {args.max_read_share}")
    for flag, value in (
        ("--segments", args.segments),
        ("--concurrency", args.concurrency),
        ("--read-rate", args.read_rate),
    ):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if args.segments is not None and args.segments > 1_000_000:
        raise UserError("--segments is at most 1,000,000 (DynamoDB's TotalSegments limit)")
    messages = sys.stderr if args.json else sys.stdout
    if args.invoke == "deployed":
        return _deployed(args, messages)
    if args.function_name is not None or args.concurrency is not None:
        raise UserError("--function-name and --concurrency go with --invoke deployed")
    return _local(args, messages)


def _local(args: argparse.Namespace, messages: TextIO) -> int:
    stack = deploy_to_local_endpoint(
        args,
        messages=messages,
        refusal="no local endpoint: `streams backfill` runs the handler locally against a "
        "local endpoint; start `streams local up`, or use --invoke deployed --function-name",
    )
    mapping = LocalMapping(stack, args.function, region=args.region)
    stream_arn = dynamodb_stream_of(mapping.function)
    session = local_session(mapping.region)
    dynamodb = session.client(
        "dynamodb", endpoint_url=service_endpoint("dynamodb", mapping.endpoint_url)
    )
    target = BackfillTarget.of(dynamodb, stream_arn)
    segments = args.segments or target.segments()
    positions = local_positions(
        mapping, dynamodb, stream_arn, segments, state=args.state, fresh=args.fresh
    )
    settings = _settings(args, target, segments, deadline_seconds=mapping.function_spec.timeout)

    def run(on_page: OnPage) -> BackfillSummary:
        with function_backfill(
            mapping, session, target, settings=settings, positions=positions, on_page=on_page
        ) as backfill:
            return _interruptible(backfill)

    return _report(args, messages, target, positions, run)


def _deployed(args: argparse.Namespace, messages: TextIO) -> int:
    if args.function_name is None:
        raise UserError("--invoke deployed needs --function-name (the deployed function)")
    for flag, given in (("--function", args.function), ("--stack-name", args.stack_name)):
        if given is not None:
            raise UserError(f"{flag} goes with --invoke local; deployed takes --function-name")
    session = boto3.Session(region_name=args.region)
    lambda_client = session.client(
        "lambda",
        endpoint_url=service_endpoint("lambda", None),
        # A synchronous invocation lasts up to the function's timeout (15 minutes at most).
        config=Config(read_timeout=910, retries={"mode": "standard"}),
    )
    source = DeployedSource.of(lambda_client, args.function_name)
    dynamodb = session.client("dynamodb", endpoint_url=service_endpoint("dynamodb", None))
    target = BackfillTarget.of(dynamodb, source.stream_arn)
    segments = args.segments or target.segments()
    print(
        f"streams: backfilling {target.table_name} into the deployed {source.function_name}",
        file=messages,
        flush=True,
    )
    if args.state is None:
        print(
            "streams: positions are not kept (no --state): an interrupted backfill starts over",
            file=messages,
        )
    positions = SegmentPositions(
        None if args.state is None else FilePositions(args.state), segments, fresh=args.fresh
    )
    sink = SqsDeadLetterQueue.from_environment(
        source.environment,
        sqs=session.client("sqs", endpoint_url=service_endpoint("sqs", None)),
        s3=session.client("s3", endpoint_url=service_endpoint("s3", None)),
    )
    settings = _settings(args, target, segments, concurrency=args.concurrency)

    def run(on_page: OnPage) -> BackfillSummary:
        return _interruptible(
            Backfill(
                dynamodb=dynamodb,
                table_name=target.table_name,
                key_names=target.key_names,
                stream_arn=target.stream_arn,
                region=session.region_name,
                invoke=DeployedFunction(lambda_client, source.function_name),
                sink=sink,
                settings=settings,
                positions=positions,
                function_name=source.function_name,
                on_page=on_page,
            )
        )

    return _report(args, messages, target, positions, run)


def _settings(
    args: argparse.Namespace, target: BackfillTarget, segments: int, **where: Any
) -> BackfillSettings:
    """The scan's settings from the command line; `where` adds those of where it runs."""
    return BackfillSettings(
        segments=segments,
        read_units_per_second=target.read_rate(args.max_read_share, args.read_rate),
        consistent_read=args.consistent_read,
        **where,
    )


def _interruptible(backfill: Backfill) -> BackfillSummary:
    with sigterm_as_interrupt():
        try:
            return backfill.run()
        except KeyboardInterrupt:
            # Backfill.run has stopped its segments and kept what each offered.
            raise _Interrupted from None


class _Interrupted(Exception):
    pass


def _report(
    args: argparse.Namespace,
    messages: TextIO,
    target: BackfillTarget,
    positions: SegmentPositions,
    run: Callable[[OnPage], BackfillSummary],
) -> int:
    if positions.all_done:
        print(
            f"streams: every segment of this backfill finished already (positions kept in "
            f"{positions.where}): --fresh offers every item again",
            file=messages,
        )
        return 0
    segments = positions.total
    per_segment = max(1, target.item_count // segments)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(file=messages),
        disable=args.json,
    ) as progress:
        tasks = [progress.add_task(f"segment {n}", total=per_segment) for n in range(segments)]
        try:
            summary = run(lambda segment, items: progress.advance(tasks[segment], items))
        except _Interrupted:
            summary = None
    if summary is None:
        kept = (
            "positions were not kept (no --state): a rerun starts over"
            if positions.where == "nowhere"
            else f"every page offered is kept in {positions.where}: run the same command "
            "again to go on"
        )
        print(f"streams: stopped (Ctrl-C); {kept}", file=messages)
        return 130
    if args.json:
        print(json.dumps(summary.as_json()))
    else:
        print(
            f"offered {summary.offered}, applied {summary.applied}, parked {summary.parked}, "
            f"retried {summary.retried}, throttled {summary.throttled} in "
            f"{summary.seconds:.1f} s ({summary.offered / max(summary.seconds, 1e-9):,.0f} "
            "items/s)",
            file=messages,
        )
    return 0
