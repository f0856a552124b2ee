"""One poison record in a 1,000-record batch: our batch core beside a plain handler with bisect.

The same 1,000 stream records (one table, one shard; the 501st record is poison) go through the
local event source mapping twice, each time to a function of its own, in worker processes, with
moto's server in a process of its own:

- batch core: `StreamProcessor` around a per-record handler that raises `Poison` on the bad
  record (`ReportBatchItemFailures`); the core parks it, in full, in the dead-letter queue and
  goes on;
- plain handler: a loop over the records that raises on the bad one, under
  `BisectBatchOnFunctionError: true` and `MaximumRetryAttempts: 2`: the mapping splits the batch
  until the bad record is alone, retries it twice, and gives it up to the on-failure queue
  (metadata only).

Both functions write each good record they handle to a file. Per contender: invocations, good
records handled more than once (and the extra handlings), where the poison record ended up, and
the time to drain the batch (first invocation's start to last invocation's end), with the
mapping's own retry pauses (`min(2**n, 60)` s, as Lambda-like as AWS documents).

    python bench/poison.py [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mapping import RUNTIME, fill, moto_server, write_function

from streams.local.endpoint import local_session
from streams.local.run import LocalMapping
from streams.local.stack import DeployedStack, deploy_template
from streams.mapping import Invocation

RECORDS = 1000
POISON_INDEX = 500

TEMPLATE = f"""\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Directory:
    Type: String
  PoisonKey:
    Type: String
Globals:
  Function:
    CodeUri: .
    Runtime: {RUNTIME}
    Timeout: 60
    Environment:
      Variables:
        POISON_KEY: !Ref PoisonKey
        DEAD_LETTER_QUEUE_URL: !Ref DeadLetterQueue
Resources:
  Items:
    Type: AWS::DynamoDB::Table
    Properties:
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions: [{{AttributeName: pk, AttributeType: S}}]
      KeySchema: [{{AttributeName: pk, KeyType: HASH}}]
      StreamSpecification: {{StreamViewType: NEW_IMAGE}}
  DeadLetterQueue:
    Type: AWS::SQS::Queue
  OnFailureQueue:
    Type: AWS::SQS::Queue
  Core:
    Type: AWS::Serverless::Function
    Properties:
      Handler: functions.core_handler
      Environment:
        Variables:
          HANDLED_FILE: !Sub "${{Directory}}/core.handled"
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Items.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 1000
            FunctionResponseTypes: [ReportBatchItemFailures]
            BisectBatchOnFunctionError: true
            MaximumRetryAttempts: 2
            DestinationConfig:
              OnFailure:
                Destination: !GetAtt OnFailureQueue.Arn
  Plain:
    Type: AWS::Serverless::Function
    Properties:
      Handler: functions.plain_handler
      Environment:
        Variables:
          HANDLED_FILE: !Sub "${{Directory}}/plain.handled"
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt Items.StreamArn
            StartingPosition: TRIM_HORIZON
            BatchSize: 1000
            BisectBatchOnFunctionError: true
            MaximumRetryAttempts: 2
            DestinationConfig:
              OnFailure:
                Destination: !GetAtt OnFailureQueue.Arn
Outputs:
  TableName:
    Value: !Ref Items
  DeadLetterQueueUrl:
    Value: !Ref DeadLetterQueue
  OnFailureQueueUrl:
    Value: !Ref OnFailureQueue
"""

FUNCTIONS = """\
import os
from pathlib import Path

from streams import Poison, StreamProcessor

POISON_KEY = os.environ["POISON_KEY"]
HANDLED = Path(os.environ["HANDLED_FILE"])


def _handled(key):
    with HANDLED.open("a") as handled:
        handled.write(key + "\\n")


def handle(record):
    key = record.keys["pk"]
    if key == POISON_KEY:
        raise Poison("the poison record")
    _handled(key)


processor = StreamProcessor(handle)


def core_handler(event, context):
    return processor.process(event, context)


def plain_handler(event, context):
    for record in event["Records"]:
        key = record["dynamodb"]["Keys"]["pk"]["S"]
        if key == POISON_KEY:
            raise ValueError("the poison record")
        _handled(key)
"""


@dataclass(frozen=True)
class Drain:
    invocations: int
    failed_invocations: int
    good_records_handled_more_than_once: int
    extra_handlings: int
    good_records_missing: int
    parked_in_dead_letter_queue: int
    on_failure_records: int
    seconds_to_drain: float


def _queue_depth(stack: DeployedStack, output: str) -> int:
    sqs = local_session(stack.region).client("sqs", endpoint_url=stack.endpoint_url)
    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.outputs[output], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def drain(stack: DeployedStack, function: str, handled_file: Path, good: set[str]) -> Drain:
    """Run `function`'s mapping over the stream until idle; what it cost."""
    lock = threading.Lock()
    invocations: list[tuple[float, float, Invocation]] = []  # start, end, invocation

    def invoked(invocation: Invocation) -> None:
        now = time.perf_counter()
        with lock:
            invocations.append((now - invocation.duration, now, invocation))

    parked_before = _queue_depth(stack, "DeadLetterQueueUrl")
    dropped_before = _queue_depth(stack, "OnFailureQueueUrl")
    LocalMapping(stack, function, on_invocation=invoked).run(exit_when_idle=1.0)
    handlings = Counter(handled_file.read_text().split())
    return Drain(
        invocations=len(invocations),
        failed_invocations=sum(not invocation.succeeded for _, _, invocation in invocations),
        good_records_handled_more_than_once=sum(count > 1 for count in handlings.values()),
        extra_handlings=sum(handlings.values()) - len(handlings),
        good_records_missing=len(good - set(handlings)),
        parked_in_dead_letter_queue=_queue_depth(stack, "DeadLetterQueueUrl") - parked_before,
        on_failure_records=_queue_depth(stack, "OnFailureQueueUrl") - dropped_before,
        seconds_to_drain=round(
            max(end for _, end, _ in invocations) - min(start for start, _, _ in invocations), 3
        ),
    )


def bench() -> dict[str, Any]:
    keys = [f"item-{number:04d}" for number in range(RECORDS)]
    poison = keys[POISON_INDEX]
    with moto_server() as endpoint, tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        template = write_function(path, TEMPLATE, "functions", FUNCTIONS)
        stack = deploy_template(
            template,
            endpoint_url=endpoint,
            stack_name="bench-poison",
            parameter_overrides={"Directory": directory, "PoisonKey": poison},
        )
        fill(endpoint, stack.outputs["TableName"], [{"pk": {"S": key}} for key in keys])
        good = set(keys) - {poison}
        return {
            "records": RECORDS,
            "poison_position": POISON_INDEX + 1,
            "batch_core": asdict(drain(stack, "Core", path / "core.handled", good)),
            "plain_handler_with_bisect": asdict(
                drain(stack, "Plain", path / "plain.handled", good)
            ),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.getLogger("streams").setLevel(logging.ERROR)  # the table below says what happened
    results = bench()
    if args.json:
        print(json.dumps(results))
        return 0
    core, plain = results["batch_core"], results["plain_handler_with_bisect"]
    print(
        f"one poison record (position {results['poison_position']}) in a "
        f"{results['records']:,}-record batch\n"
    )
    print(f"{'':<40}{'batch core':>14}{'plain + bisect':>16}")
    for name, key in [
        ("invocations", "invocations"),
        ("failed invocations", "failed_invocations"),
        ("good records handled more than once", "good_records_handled_more_than_once"),
        ("extra handlings of good records", "extra_handlings"),
        ("good records never handled", "good_records_missing"),
        ("parked in full (dead-letter queue)", "parked_in_dead_letter_queue"),
        ("metadata only (on-failure queue)", "on_failure_records"),
        ("time to drain (s)", "seconds_to_drain"),
    ]:
        print(f"{name:<40}{core[key]:>14}{plain[key]:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
