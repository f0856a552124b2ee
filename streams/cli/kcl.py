"""`streams kcl`: run the handler on a Kinesis Client Library fleet (amazon-kclpy).

- `streams kcl worker --handler module:function` is the record processor the MultiLangDaemon
  starts, one process per shard lease (the properties file's `executableName`).
- `streams kcl properties ...` writes the KCL properties file for a stream and an application.
- `streams kcl run --properties FILE` starts the MultiLangDaemon (or `--print`s its command),
  after checking that KCL's jars are there and are jars.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from streams.arn import Arn
from streams.backoff import Backoff
from streams.batch import RetryPolicy, StreamProcessor
from streams.cli.common import load_handler
from streams.deadletter import SqsDeadLetterQueue
from streams.errors import UserError
from streams.kcl.daemon import (
    CLOUDWATCH,
    DYNAMODB,
    KINESIS,
    LOCAL_SETTINGS,
    NOT_INSTALLED,
    daemon_command,
    jar_folder,
    local_endpoints,
    properties_text,
)

__all__ = ["register"]

_INITIAL_POSITIONS = ("TRIM_HORIZON", "LATEST")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "kcl",
        help="run the handler on a Kinesis Client Library fleet",
        description="Run the handler on a Kinesis Client Library fleet (amazon-kclpy).",
    )
    commands = parser.add_subparsers(title="kcl commands", metavar="COMMAND", required=True)

    worker = commands.add_parser(
        "worker",
        help="the record processor the MultiLangDaemon starts (one per shard lease)",
        description="The record processor KCL's MultiLangDaemon starts, one process per shard "
        "lease. Its stdout carries the protocol only; everything else goes to stderr.",
    )
    worker.add_argument("--handler", required=True, metavar="MODULE:FUNCTION")
    worker.add_argument("--stream-arn", help="the stream's ARN (the records' eventSourceARN)")
    worker.add_argument("--region", help="the records' awsRegion (default: AWS_REGION)")
    worker.add_argument(
        "--queue-url", help="the dead-letter queue (default: DEAD_LETTER_QUEUE_URL)"
    )
    worker.add_argument(
        "--max-record-age",
        type=int,
        default=21600,
        metavar="SECONDS",
        help="park a record that keeps failing transiently once it is this old, as too-old "
        "(default 21600; 0: hold the shard until it succeeds)",
    )
    worker.add_argument(
        "--retries",
        type=int,
        default=3,
        help="in-place retries of a transient failure before the shard is held (default 3)",
    )
    worker.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="first delay of the backoff between holds and checkpoint retries (default 1)",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="records of different partition keys handled at once, in order per key (default 1)",
    )
    worker.set_defaults(func=_worker)

    properties = commands.add_parser(
        "properties",
        help="write a KCL properties file",
        description="Write the properties file KCL's MultiLangDaemon reads.",
    )
    stream = properties.add_mutually_exclusive_group(required=True)
    stream.add_argument("--stream", help="the stream's name (its ARN is looked up)")
    stream.add_argument("--stream-arn", help="the stream's ARN (no look-up)")
    properties.add_argument(
        "--application",
        required=True,
        help="KCL application name (also the name of its DynamoDB lease table)",
    )
    properties.add_argument("--handler", required=True, metavar="MODULE:FUNCTION")
    properties.add_argument("--region", help="default: the stream ARN's, else AWS_REGION")
    properties.add_argument("--queue-url", help="the dead-letter queue the workers park into")
    properties.add_argument(
        "--initial-position",
        choices=_INITIAL_POSITIONS,
        default="TRIM_HORIZON",
        help="where a shard without a checkpoint starts (default TRIM_HORIZON)",
    )
    properties.add_argument("--max-records", type=int, help="records per GetRecords call")
    properties.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="the workers' --concurrency: records of different partition keys handled at once",
    )
    properties.add_argument(
        "--local",
        action="store_true",
        help="a fleet on local endpoints (AWS_ENDPOINT_URL...): polling reads and failover, "
        "lease assignment and shard sync in seconds; never for a fleet on AWS",
    )
    properties.add_argument(
        "--output", "-o", default="kcl.properties", type=Path, help="default: kcl.properties"
    )
    properties.add_argument("--force", action="store_true", help="overwrite an existing file")
    properties.set_defaults(func=_properties)

    run = commands.add_parser(
        "run",
        help="start KCL's MultiLangDaemon with a properties file",
        description="Start KCL's MultiLangDaemon (java) with a properties file, using "
        "amazon-kclpy's jars, or print the command.",
    )
    run.add_argument("--properties", required=True, type=Path)
    run.add_argument("--java", help="the java executable (default: java on PATH)")
    run.add_argument("--jars", type=Path, help="folder of KCL jars (default: amazon-kclpy's)")
    run.add_argument("--log-configuration", type=Path, help="a logback.xml for KCL")
    run.add_argument("--print", action="store_true", help="print the command, do not start it")
    run.set_defaults(func=_run)


# worker --------------------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    if args.max_record_age < 0 or args.retries < 0 or args.backoff < 0:
        raise UserError("--max-record-age, --retries and --backoff must not be negative")
    if args.concurrency < 1:
        raise UserError(f"--concurrency must be 1 or more, not {args.concurrency}")
    kcl = _kcl()
    # First: nothing may write to the protocol stream, not even the handler module's import.
    protocol = kcl.claim_stdout()
    handler = load_handler(args.handler)
    dead_letters = (
        SqsDeadLetterQueue(args.queue_url)
        if args.queue_url
        else SqsDeadLetterQueue.from_environment()
    )
    core = StreamProcessor(
        handler,
        dead_letters=dead_letters,
        retry=RetryPolicy(retries=args.retries),
        max_record_age=timedelta(seconds=args.max_record_age) if args.max_record_age else None,
        concurrency=args.concurrency,
    )
    processor = kcl.KclRecordProcessor(
        core,
        source=kcl.StreamSource(
            stream_arn=args.stream_arn, region=args.region or os.environ.get("AWS_REGION")
        ),
        hold=Backoff(args.backoff, 30.0),
        checkpoint_backoff=Backoff(args.backoff, 10.0),
    )
    kcl.run(processor, stdin=sys.stdin, stdout=protocol, stderr=sys.stderr)
    return 0


def _kcl() -> ModuleType:
    """streams.kcl.processor, which needs amazon-kclpy (an optional extra)."""
    try:
        from streams.kcl import processor as kcl
    except ImportError as error:
        raise UserError(NOT_INSTALLED.format(error=error)) from None
    return kcl


# properties ----------------------------------------------------------------------------------


def _properties(args: argparse.Namespace) -> int:
    output: Path = args.output
    if output.exists() and not args.force:
        raise UserError(f"{output} exists: pass --force to overwrite it")
    if args.max_records is not None and args.max_records < 1:
        raise UserError("--max-records must be at least 1")
    if args.concurrency is not None and args.concurrency < 1:
        raise UserError(f"--concurrency must be 1 or more, not {args.concurrency}")
    if args.handler.count(":") != 1 or " " in args.handler:
        raise UserError(f"--handler {args.handler!r} is not MODULE:FUNCTION")
    # Where the daemon's clients go: boto3 here and the daemon's Java SDK read the same variables.
    endpoints = local_endpoints(os.environ)
    if args.local:
        missing = [e.variable for e in (KINESIS, DYNAMODB) if e not in endpoints]
        if missing:
            raise UserError(
                f"--local needs local endpoints: set AWS_ENDPOINT_URL (or {' and '.join(missing)})"
            )
    if args.stream_arn:
        arn = args.stream_arn
        arn_region = _arn_region(arn)  # a malformed ARN is refused, --region or not
        region = args.region or arn_region
    else:
        region = args.region or boto3.session.Session().region_name
        if not region:
            raise UserError("no AWS region: pass --region or set AWS_REGION")
        arn = _stream_arn(args.stream, region)
    worker = [sys.executable, "-m", "streams", "kcl", "worker", "--handler", args.handler]
    worker += ["--stream-arn", arn, "--region", region]
    if args.queue_url:
        worker += ["--queue-url", args.queue_url]
    if args.concurrency is not None:
        worker += ["--concurrency", str(args.concurrency)]
    spaced = [part for part in worker if " " in part or not part]
    if spaced:
        # The MultiLangDaemon splits executableName on spaces, with no quoting.
        raise UserError(
            f"{spaced[0]!r} contains a space, which executableName cannot hold "
            "(the MultiLangDaemon splits it on spaces)"
        )
    values: dict[str, str | int] = {
        "executableName": " ".join(worker),
        "streamName": arn.rpartition("/")[2],
        "streamArn": arn,
        "applicationName": args.application,
        "regionName": region,
        "initialPositionInStream": args.initial_position,
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
    }
    if args.max_records is not None:
        values["maxRecords"] = args.max_records
    comments: dict[str, str] = {}
    for endpoint, url in endpoints.items():
        values[endpoint.property] = url
        comments[endpoint.property] = (
            f"{endpoint.service} endpoint: from {endpoint.variable} or AWS_ENDPOINT_URL"
        )
    if args.local:
        for name, (value, why) in LOCAL_SETTINGS.items():
            values[name] = value
            comments[name] = f"--local: {why}"
        if CLOUDWATCH not in endpoints:
            # KCL's metrics would go to CloudWatch on AWS: a local fleet sends nothing there.
            values["metricsLevel"] = "NONE"
            comments["metricsLevel"] = "--local: no CloudWatch endpoint, so no KCL metrics"
    output.write_text(properties_text(values, comments), encoding="iso-8859-1")
    where = (
        "endpoints " + ", ".join(f"{e.service} {url}" for e, url in endpoints.items())
        if endpoints
        else f"AWS region {region}"
    )
    local = "; --local settings" if args.local else ""
    print(f"wrote {output}: stream {arn}, application {args.application} ({where}{local})")
    return 0


def _arn_region(arn: str) -> str:
    parsed = Arn.of(arn)
    if parsed is None or parsed.stream_source != "aws:kinesis":
        raise UserError(f"{arn!r} is not a Kinesis stream ARN")
    return parsed.region


def _stream_arn(name: str, region: str) -> str:
    kinesis = boto3.client("kinesis", region_name=region)
    try:
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    except kinesis.exceptions.ResourceNotFoundException:
        raise UserError(f"no Kinesis stream {name!r} in {region}") from None
    except (ClientError, BotoCoreError) as error:
        raise UserError(f"cannot look up Kinesis stream {name!r} in {region}: {error}") from None
    return summary["StreamARN"]


# run -----------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    properties: Path = args.properties
    if not properties.is_file():
        raise UserError(f"no properties file {properties} (write one: streams kcl properties)")
    java = args.java or shutil.which("java") or "java"
    command = daemon_command(
        properties,
        jars=args.jars or jar_folder(),
        java=java,
        log_configuration=args.log_configuration,
    )
    if args.print:
        print(shlex.join(command))
        return 0
    executable = shutil.which(java)
    if executable is None:
        raise UserError(
            f"{java!r} not found: the MultiLangDaemon needs a Java runtime (pass --java PATH)"
        )
    os.execv(executable, command)
