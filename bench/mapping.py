"""The local event source mapping beside a plain boto3 loop, over the same DynamoDB stream.

moto's server runs in its own process on 127.0.0.1. For each backlog size, a table whose stream
holds that many records (written with BatchWriteItem before anything reads) is read three times:

- plain loop, before and after the mapping (the mean counts: the machine's load drifts): one
  DynamoDB Streams client, `GetRecords` with `Limit=1000` back to back from `TRIM_HORIZON` until
  every record was read (no conversion, no function);
- the mapping: `streams.run.LocalMapping` with a no-op function (`BatchSize: 1000`, window 0,
  `TRIM_HORIZON`) in a process of its own, timed from `run()` until the function has had every
  record (start-up included: the state table, the lease, the worker's cold start). Its peak
  memory is the largest sum of the resident sizes of its process tree (the mapping and its
  workers, not moto), sampled from /proc every 50 ms.

DynamoDB Streams on moto have one shard per table, so both read one shard with one reader.

    python bench/mapping.py [--records N ...] [--json]

Targets: the mapping at least 0.8 of the plain loop; its peak memory at the largest backlog
within 1.2x of the smallest.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streams.local.endpoint import EndpointProcess, local_session
from streams.local.run import LocalMapping
from streams.local.stack import deploy_template

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
BATCH_WRITE = 25  # BatchWriteItem's limit
SAMPLE_SECONDS = 0.05

TEMPLATE = f"""\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  Items:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{{AttributeName: pk, AttributeType: S}}]
      KeySchema: [{{AttributeName: pk, KeyType: HASH}}]
      StreamSpecification: {{StreamViewType: NEW_IMAGE}}
  NoOp:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: .
      Handler: noop.handler
      Runtime: {RUNTIME}
      Timeout: 60
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Items.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 1000
Outputs:
  TableName:
    Value: !Ref Items
  StreamArn:
    Value: !GetAtt Items.StreamArn
"""
NO_OP = "def handler(event, context):\n    return None\n"


# --- moto's server in its own process ----------------------------------------------------


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server in a process of its own on 127.0.0.1 (a free port); its URL."""
    with EndpointProcess() as endpoint:
        yield endpoint.url


def write_function(directory: Path, template: str, module: str, code: str) -> Path:
    """A template and its function's module in `directory` (the template's CodeUri)."""
    (directory / f"{module}.py").write_text(code)
    path = directory / "template.yaml"
    path.write_text(template)
    return path


def fill(endpoint: str, table: str, items: list[dict[str, Any]]) -> None:
    """Write `items` with BatchWriteItem, 25 at a time, retrying what comes back unprocessed."""
    client = local_session().client("dynamodb", endpoint_url=endpoint)
    for start in range(0, len(items), BATCH_WRITE):
        requests: dict[str, Any] = {
            table: [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE]]
        }
        while requests:
            requests = client.batch_write_item(RequestItems=requests).get("UnprocessedItems", {})


# --- the two readers ----------------------------------------------------------------------


def plain_loop(endpoint: str, stream_arn: str, records: int) -> float:
    """Seconds for one client to read `records` records with back-to-back GetRecords."""
    streams = local_session().client("dynamodbstreams", endpoint_url=endpoint)
    started = time.perf_counter()
    (shard,) = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    read = 0
    while read < records:
        response = streams.get_records(ShardIterator=iterator, Limit=1000)
        read += len(response["Records"])
        iterator = response["NextShardIterator"]
    return time.perf_counter() - started


@dataclass(frozen=True)
class MappingRun:
    records: int
    seconds: float  # from run() until the function had every record
    startup_seconds: float  # from run() until the first invocation started
    invocations: int
    peak_rss_mb: float  # the mapping's process tree


def _children(pid: int) -> list[int]:
    """The processes `pid`'s threads started (each thread lists its own children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in task.read_text().split())
        except OSError:  # the thread ended meanwhile
            continue
    return found


def _tree_rss_kb(pid: int) -> int:
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
        pending.extend(_children(current))
    return total


def run_mapping(endpoint: str, template: Path, stack_name: str, records: int) -> MappingRun:
    """The mapping in a process of its own (this script's `--child` mode), its tree sampled."""
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            endpoint,
            str(template),
            stack_name,
            str(records),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(SAMPLE_SECONDS):
            peak = max(peak, _tree_rss_kb(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"the mapping's process failed (exit status {child.returncode})")
    figures = json.loads(output.splitlines()[-1])
    return MappingRun(peak_rss_mb=round(peak / 1024, 1), **figures)


def child(endpoint: str, template: str, stack_name: str, records: int) -> None:
    """`--child`: run the mapping until the function has had `records` records; print JSON."""
    stack = deploy_template(template, endpoint_url=endpoint, stack_name=stack_name)
    lock = threading.Lock()
    seen = {"records": 0, "invocations": 0}
    times: dict[str, float] = {}

    def invoked(invocation: Any) -> None:
        now = time.perf_counter()
        with lock:
            times.setdefault("first", now - invocation.duration)
            seen["records"] += invocation.records
            seen["invocations"] += 1
            if seen["records"] >= records and "last" not in times:
                times["last"] = now
                mapping.stop()

    mapping = LocalMapping(stack, on_invocation=invoked)
    started = time.perf_counter()
    mapping.run()
    print(
        json.dumps(
            {
                "records": seen["records"],
                "seconds": round(times["last"] - started, 3),
                "startup_seconds": round(times["first"] - started, 3),
                "invocations": seen["invocations"],
            }
        )
    )


# --- the bench ----------------------------------------------------------------------------


def bench(backlogs: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {"backlogs": {}}
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as directory:
        template = write_function(Path(directory), TEMPLATE, "noop", NO_OP)
        for records in backlogs:
            stack_name = f"bench-mapping-{records}"
            stack = deploy_template(template, endpoint_url=endpoint, stack_name=stack_name)
            fill(
                endpoint,
                stack.outputs["TableName"],
                [{"pk": {"S": f"item-{n:07d}"}, "n": {"N": str(n)}} for n in range(records)],
            )
            # The plain loop before and after the mapping: the machine's load drifts.
            before = plain_loop(endpoint, stack.outputs["StreamArn"], records)
            mapped = run_mapping(endpoint, template, stack_name, records)
            plain = (before + plain_loop(endpoint, stack.outputs["StreamArn"], records)) / 2
            results["backlogs"][str(records)] = {
                "plain_loop_records_per_second": round(records / plain),
                "mapping_records_per_second": round(records / mapped.seconds),
                "mapping_vs_plain_loop": round(plain / mapped.seconds, 2),
                "mapping": asdict(mapped),
            }
    smallest, largest = str(min(backlogs)), str(max(backlogs))
    runs = results["backlogs"]
    results["memory_largest_vs_smallest"] = round(
        runs[largest]["mapping"]["peak_rss_mb"] / runs[smallest]["mapping"]["peak_rss_mb"], 2
    )
    return results


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--child"]:
        endpoint, template, stack_name, records = arguments[1:]
        child(endpoint, template, stack_name, int(records))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        metavar="N",
        help="backlog sizes (default 10000 100000)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(arguments)
    results = bench(sorted(set(args.records)))
    if args.json:
        print(json.dumps(results))
        return 0
    for records, run in results["backlogs"].items():
        mapped = run["mapping"]
        print(f"backlog {int(records):,} records")
        print(f"  plain loop (records/s)   {run['plain_loop_records_per_second']:>10,}")
        print(
            f"  mapping (records/s)      {run['mapping_records_per_second']:>10,}"
            f"  ({mapped['invocations']} invocations, start-up {mapped['startup_seconds']} s)"
        )
        print(f"  mapping / plain loop     {run['mapping_vs_plain_loop']:>10}x  (target 0.8x)")
        print(f"  mapping peak RSS (MB)    {mapped['peak_rss_mb']:>10}")
    print(
        f"peak memory, largest / smallest backlog: {results['memory_largest_vs_smallest']}x "
        "(target within 1.2x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
