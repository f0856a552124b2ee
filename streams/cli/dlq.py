"""`streams dlq`: list, show, redrive and purge parked records."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from streams.cli.common import load_handler
from streams.cli.endpoint import Endpoint, current_endpoint
from streams.deadletter import REASONS, SqsDeadLetterQueue
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.hydrate import Hydrator, OnFailureQueue
from streams.local.endpoint import read_recorded_endpoint
from streams.local.stack import stack_outputs
from streams.local.template import plan_template
from streams.ops.dlq import (
    DEFAULT_VISIBILITY_SECONDS,
    DeadLetterQueueReader,
    ParkedMessage,
    RedriveReport,
    redrive,
    replay_order,
    sort_for_redrive,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="inspect, replay and purge parked records",
        description="The dead-letter queue of parked records (DESIGN.md's version-1 messages). "
        "The queue comes from --queue-url, DEAD_LETTER_QUEUE_URL, or the stack that "
        "`streams local up` recorded. S3 overflow pointers are followed.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--queue-url", help="the dead-letter queue (default: see above)")

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="a table of parked records",
        description="A table of "
        "parked records: when, reason, error type, shard, keys. Messages are released again.",
    )
    listing.add_argument("--reason", choices=REASONS)
    listing.add_argument("--error-type", help="only records that failed with this exception type")
    listing.add_argument("--limit", type=int, help="read at most this many messages")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=_list)

    show = commands.add_parser(
        "show", parents=[common], help="one parked record in full (record and traceback)"
    )
    show.add_argument(
        "message_id", metavar="ID", help="the message id `list` shows, or a unique prefix of it"
    )
    show.set_defaults(func=_show)

    replay = commands.add_parser(
        "redrive",
        parents=[common],
        help="replay parked records through a fixed handler",
        description="Replays parked records through HANDLER (inside StreamProcessor), in their "
        "original order per key; deletes each message only after its record succeeded. "
        "Records that fail again stay parked with their new error; the exit code is then 1. "
        "Safe to run twice or in parallel: messages in flight are invisible to other runs.",
    )
    replay.add_argument("--handler", required=True, help="MODULE:FUNCTION, the per-record handler")
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.add_argument("--limit", type=int, help="replay at most this many messages")
    replay.add_argument(
        "--visibility-timeout",
        type=int,
        default=DEFAULT_VISIBILITY_SECONDS,
        help="seconds the messages stay invisible to others while this run works (default 900)",
    )
    sources = replay.add_mutually_exclusive_group()
    sources.add_argument(
        "--stream-arn",
        help="replay only records of this stream (default: the recorded stack's "
        "SourceTableStreamArn); records of any other stay parked",
    )
    sources.add_argument("--any-source", action="store_true", help="replay records of every stream")
    replay.set_defaults(func=_redrive)

    hydrate = commands.add_parser(
        "hydrate",
        parents=[common],
        help="turn on-failure metadata records back into full parked records",
        description="Reads the event source mapping's on-failure records (metadata only), "
        "fetches the records they point to from the stream while it still has them, and "
        "parks them with reason `hydrated`. An on-failure record is deleted only once its "
        "records are parked. Records the stream no longer has are reported (exit code 1).",
    )
    hydrate.add_argument(
        "--from-queue", help="the on-failure queue (default: the stack's OnFailureQueueUrl)"
    )
    hydrate.set_defaults(func=_hydrate)

    purge = commands.add_parser(
        "purge", parents=[common], help="delete every parked record (asks first on AWS)"
    )
    purge.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    purge.set_defaults(func=_purge)


def _clients(endpoint: Endpoint) -> tuple[SQSClient, S3Client]:
    session = endpoint.session()
    return (
        session.client("sqs", endpoint_url=service_endpoint("sqs", endpoint.url)),
        session.client("s3", endpoint_url=service_endpoint("s3", endpoint.url)),
    )


class _StackOutputs:
    """The recorded stack's outputs, described once per command, when first needed (none
    without a recorded stack)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    @functools.cached_property
    def all(self) -> dict[str, str]:
        endpoint = self._endpoint
        if endpoint.stack_name is None:
            return {}
        cloudformation = endpoint.session().client(
            "cloudformation", endpoint_url=service_endpoint("cloudformation", endpoint.url)
        )
        return stack_outputs(cloudformation, endpoint.stack_name) or {}

    def get(self, name: str) -> str | None:
        return self.all.get(name)


def _queue(args: argparse.Namespace, outputs: _StackOutputs) -> str:
    url: str | None = (
        args.queue_url
        or os.environ.get("DEAD_LETTER_QUEUE_URL")
        or outputs.get("DeadLetterQueueUrl")
    )
    if not url:
        raise UserError(
            "no dead-letter queue: pass --queue-url, set DEAD_LETTER_QUEUE_URL, or run "
            "`streams local up` first"
        )
    return url


def _reader(
    args: argparse.Namespace, visibility: int = 30
) -> tuple[DeadLetterQueueReader, Endpoint, _StackOutputs]:
    endpoint = current_endpoint()
    print(endpoint.describe(), file=sys.stderr)
    outputs = _StackOutputs(endpoint)
    sqs, s3 = _clients(endpoint)
    url = _queue(args, outputs)
    print(f"dead-letter queue: {url}", file=sys.stderr)
    bucket = os.environ.get("DEAD_LETTER_BUCKET") or outputs.get("DeadLetterBucketName")
    reader = DeadLetterQueueReader(
        url, sqs=sqs, s3=s3, bucket=bucket, visibility_seconds=visibility
    )
    return reader, endpoint, outputs


def _use_function_environment(endpoint: Endpoint, outputs: _StackOutputs) -> None:
    """Against the stack `streams local up` recorded, the handler runs with its function's
    environment (the stack's resources, the region, the endpoint and its credentials), as
    `streams run` gives it; variables already set win, except credentials."""
    recorded = read_recorded_endpoint()
    if not endpoint.is_local or recorded is None or endpoint.stack_name is None:
        return
    if recorded.template is None or recorded.endpoint_url != endpoint.url:
        return
    plan = plan_template(recorded.template, region=endpoint.region)
    functions, _ = plan.functions(outputs.all)
    streamed = [spec for spec in functions.values() if spec.event_sources]
    if len(streamed) != 1:
        return  # no one function the handler belongs to: the user's environment decides
    credentials = endpoint.session().get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials is not None else None
    environment = {
        **streamed[0].environment,
        "AWS_ENDPOINT_URL": str(endpoint.url),
        "AWS_REGION": endpoint.region,
        "AWS_DEFAULT_REGION": endpoint.region,
    }
    for name, value in environment.items():
        os.environ.setdefault(name, value)
    if frozen is not None:  # the local endpoint's own: real credentials are never sent to it
        os.environ["AWS_ACCESS_KEY_ID"] = str(frozen.access_key)
        os.environ["AWS_SECRET_ACCESS_KEY"] = str(frozen.secret_key)
        os.environ.pop("AWS_SESSION_TOKEN", None)


def _summary(message: ParkedMessage) -> dict[str, Any]:
    body = message.body
    if message.malformed is not None:
        return {
            "id": message.message_id,
            "reason": "malformed",
            "errorType": message.malformed,
            "failedAt": None,
            "shardId": None,
            "sequenceNumber": None,
            "keys": None,
        }
    return {
        "id": message.message_id,
        "failedAt": body.get("failedAt"),
        "reason": message.reason,
        "errorType": message.error_type,
        "shardId": body.get("shardId"),
        "sequenceNumber": body.get("sequenceNumber"),
        "keys": message.keys(),
    }


def _list(args: argparse.Namespace) -> int:
    reader, _, _ = _reader(args)
    messages = reader.peek(args.limit)
    chosen = [
        m
        for m in sorted(messages, key=lambda m: str(m.body.get("failedAt")))
        if (args.reason is None or m.reason == args.reason)
        and (args.error_type is None or m.error_type == args.error_type)
    ]
    rows = [_summary(m) for m in chosen]
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # A rule under the header and nothing else, so the other columns keep what the id leaves.
    table = Table(
        title=f"{len(rows)} parked records", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    for column in ("failed at", "reason", "error type", "shard", "keys"):
        table.add_column(column, overflow="fold")
    # An id is what `show` takes: never cut short, whatever the terminal's width.
    widest = max((len(row["id"]) for row in rows), default=2)
    table.add_column("id", no_wrap=True, min_width=widest)
    for row in rows:
        cells = (
            str(row["failedAt"] or "-"),
            row["reason"],
            row["errorType"],
            str(row["shardId"] or "-"),
            json.dumps(row["keys"], default=str),
            row["id"],
        )
        # Text from the queue is printed as text, never read as Rich markup.
        table.add_row(*(Text(cell) for cell in cells))
    Console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    reader, _, _ = _reader(args)
    messages = reader.peek()
    found = [m for m in messages if m.message_id.startswith(args.message_id)]
    exact = [m for m in found if m.message_id == args.message_id]
    if len(found) > 1 and not exact:
        raise UserError(
            f"{len(found)} parked records have ids starting {args.message_id!r}: give more of it"
        )
    if not found:
        raise UserError(f"no parked record with id {args.message_id} (see `streams dlq list`)")
    message = (exact or found)[0]
    if message.malformed is not None:
        print(json.dumps({"id": message.message_id, "malformed": message.malformed}, indent=2))
        return 0
    print(json.dumps({"id": message.message_id, **message.body}, indent=2, default=str))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    reader, endpoint, outputs = _reader(args, visibility=args.visibility_timeout)
    source_arn: str | None = None
    if not args.any_source:
        source_arn = args.stream_arn or outputs.get("SourceTableStreamArn")
        if not source_arn:
            raise UserError(
                "which stream's records to replay? pass --stream-arn ARN (or --any-source)"
            )
    _use_function_environment(endpoint, outputs)
    handler = load_handler(args.handler)
    if args.dry_run:
        # The same choice as a redrive: never malformed messages or another stream's records.
        left_out = RedriveReport()
        replayable = sort_for_redrive(reader.peek(args.limit), source_arn, left_out)
        for group in replay_order(replayable):
            for message in group:
                print(json.dumps(_summary(message), default=str))
        print(
            f"dry run: {len(replayable)} records would be replayed; left parked: "
            f"{len(left_out.other_source)} of another stream, {len(left_out.malformed)} malformed",
            file=sys.stderr,
        )
        return 0
    queue = SqsDeadLetterQueue(reader.queue_url, sqs=reader.sqs, s3=reader.s3)
    # The core's logs and metrics (EMF lines) are for a function's log; here they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        report = redrive(
            reader, handler, dead_letters=queue, limit=args.limit, source_arn=source_arn
        )
    for message in report.malformed:
        print(f"malformed message {message.message_id}: {message.malformed}", file=sys.stderr)
    if report.other_source:
        print(
            f"{len(report.other_source)} records of another stream than {source_arn} left "
            "parked (--any-source replays them)",
            file=sys.stderr,
        )
    print(
        f"replayed {len(report.replayed)}, parked again {len(report.parked_again)}, "
        f"left for later {len(report.left)}, malformed {len(report.malformed)}, "
        f"other stream {len(report.other_source)}"
    )
    return 0 if report.ok else 1


def _hydrate(args: argparse.Namespace) -> int:
    reader, endpoint, outputs = _reader(args)
    source_url = args.from_queue or outputs.get("OnFailureQueueUrl")
    if not source_url:
        raise UserError("no on-failure queue: pass --from-queue URL (or run `streams local up`)")
    print(f"on-failure queue: {source_url}", file=sys.stderr)
    session = endpoint.session()
    hydrator = Hydrator(
        SqsDeadLetterQueue(reader.queue_url, sqs=reader.sqs, s3=reader.s3),
        dynamodbstreams=session.client(
            "dynamodbstreams", endpoint_url=service_endpoint("dynamodbstreams", endpoint.url)
        ),
        kinesis=session.client("kinesis", endpoint_url=service_endpoint("kinesis", endpoint.url)),
    )
    failures = OnFailureQueue(source_url, sqs=reader.sqs)
    totals = {"batches": 0, "parked": 0, "expired": 0, "kept": 0}
    # A kept message stays invisible until the run ends (else the drain would receive it
    # again at once, for ever), then is released on every way out so a new run can try it.
    kept: list[MessageTypeDef] = []
    try:
        for message, batch in failures.receive_all():
            outcome = hydrator.hydrate(batch)
            totals["batches"] += 1
            totals["parked"] += outcome.parked
            totals["expired"] += outcome.expired
            where = (
                f"shard {batch.shard_id} "
                f"({batch.start_sequence_number}..{batch.end_sequence_number})"
            )
            if outcome.expired:
                print(
                    f"{outcome.expired} of {batch.batch_size} records of {where} have left the "
                    "stream: they cannot be recovered",
                    file=sys.stderr,
                )
            if outcome.unfinished:
                print(
                    f"reading {where} did not finish (throttled, failing, or nothing found "
                    "yet): its on-failure record stays for the next run",
                    file=sys.stderr,
                )
            if outcome.complete:
                failures.delete(message)
            else:
                totals["kept"] += 1
                kept.append(message)
    finally:
        for message in kept:
            failures.release(message)
    print(
        f"hydrated {totals['parked']} records from {totals['batches']} on-failure records; "
        f"expired {totals['expired']}; on-failure records kept for a retry {totals['kept']}"
    )
    return 0 if totals["expired"] == 0 and totals["kept"] == 0 else 1


def _purge(args: argparse.Namespace) -> int:
    reader, endpoint, _ = _reader(args)
    if not endpoint.is_local and not args.yes:
        if not sys.stdin.isatty():
            raise UserError("refusing to purge a queue on AWS without --yes (no terminal to ask)")
        answer = input(f"Delete every parked record in {reader.queue_url}? Type 'purge': ")
        if answer.strip() != "purge":
            print("nothing deleted")
            return 1
    reader.purge()
    print(f"purged {reader.queue_url}")
    return 0
