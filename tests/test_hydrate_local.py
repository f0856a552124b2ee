"""Hydrate, end to end on moto: the on-failure records the local mapping writes when it gives up
on records are turned back into full parked records, by `streams dlq hydrate` and by the
template's HydrateFunction, run through the local mapping (its SQS event source)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

from streams.backoff import Backoff
from streams.cli import main
from streams.local.run import LocalMapping
from streams.local.stack import DeployedStack, deploy_template
from streams.mapping import Invocation
from streams.ops.dlq import DeadLetterQueueReader
from streams.sources import DynamoDBStreamSource, Position
from tests.run_functions import HYDRATE_TEMPLATE

REPOSITORY = Path(__file__).parent.parent
TEMPLATE = REPOSITORY / "template.yaml"
# Retry a failed batch at once: the rules here are about what is given up, not when.
NO_PAUSE = Backoff(base=0.01, cap=0.01, jitter=False)
CHILDREN = ("child-0", "child-1", "child-2")


def _child(child_id: str) -> dict[str, Any]:
    return {
        "childId": {"S": child_id},
        "status": {"S": "nice"},
        "address": {"M": {"city": {"S": "Oslo"}}},
    }


def _put_children(session: boto3.Session, table: str, children: tuple[str, ...]) -> None:
    dynamodb = session.client("dynamodb")
    for child_id in children:
        dynamodb.put_item(TableName=table, Item=_child(child_id))


def _peek(session: boto3.Session, queue_url: str) -> list[dict[str, Any]]:
    """The queue's message bodies, left visible for whoever reads the queue next."""
    messages = session.client("sqs").receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    )
    return [json.loads(message["Body"]) for message in messages.get("Messages", [])]


def _depth(session: boto3.Session, queue_url: str) -> int:
    """Messages in the queue, visible or in flight: 0 only once every one is deleted."""
    attributes = session.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _parked(session: boto3.Session, queue_url: str) -> list[dict[str, Any]]:
    """The dead-letter queue's messages, in the stream's order."""
    reader = DeadLetterQueueReader(queue_url, sqs=session.client("sqs"))
    return [message.body for message in sorted(reader.receive_all(), key=lambda m: m.order())]


@dataclass(frozen=True)
class GivenUp:
    """hydrate-template.yaml after its failing function's mapping gave up on every record."""

    stack: DeployedStack
    delivered: tuple[dict[str, Any], ...]  # each record as the stream delivered it, in order
    deliveries: tuple[tuple[dict[str, Any], ...], ...]  # every invocation's records
    invocations: tuple[Invocation, ...]

    @property
    def dead_letter_queue(self) -> str:
        return self.stack.outputs["DeadLetterQueueUrl"]

    @property
    def on_failure_queue(self) -> str:
        return self.stack.outputs["OnFailureQueueUrl"]


@pytest.fixture
def given_up(moto_endpoint: str, aws: boto3.Session, unique_name: str, tmp_path: Path) -> GivenUp:
    """GIVEN hydrate-template.yaml deployed and three children written to its table
    WHEN its ProcessorFunction, which fails every invocation, runs through the local mapping
    (BatchSize 2, MaximumRetryAttempts 1) until idle"""
    record_file = tmp_path / "delivered.jsonl"
    stack = deploy_template(
        HYDRATE_TEMPLATE,
        endpoint_url=moto_endpoint,
        stack_name=unique_name,
        parameter_overrides={"RecordFile": str(record_file)},
    )
    _put_children(aws, stack.outputs["SourceTableName"], CHILDREN)
    invocations: list[Invocation] = []
    LocalMapping(
        stack, "ProcessorFunction", backoff=NO_PAUSE, on_invocation=invocations.append
    ).run(exit_when_idle=0.5)
    deliveries = tuple(
        tuple(json.loads(line)["records"]) for line in record_file.read_text().splitlines()
    )
    by_sequence = {r["dynamodb"]["SequenceNumber"]: r for batch in deliveries for r in batch}
    delivered = tuple(by_sequence[number] for number in sorted(by_sequence, key=int))
    return GivenUp(stack, delivered, deliveries, tuple(invocations))


def test_the_local_mapping_gives_up_each_failing_batch_with_an_on_failure_record_pointing_to_it(
    given_up: GivenUp, aws: boto3.Session
) -> None:
    first, second = given_up.delivered[:2], given_up.delivered[2:]

    bodies = sorted(
        _peek(aws, given_up.on_failure_queue),
        key=lambda body: int(body["DDBStreamBatchInfo"]["startSequenceNumber"]),
    )

    # Each batch was delivered twice (one retry), as the stream gave it, then given up.
    assert given_up.deliveries == (first, first, second, second)
    assert [(i.records, i.succeeded) for i in given_up.invocations] == [
        (2, False),
        (2, False),
        (1, False),
        (1, False),
    ]
    assert [child["dynamodb"]["Keys"]["childId"]["S"] for child in given_up.delivered] == list(
        CHILDREN
    )
    assert [
        (
            body["DDBStreamBatchInfo"]["startSequenceNumber"],
            body["DDBStreamBatchInfo"]["endSequenceNumber"],
            body["DDBStreamBatchInfo"]["batchSize"],
            body["DDBStreamBatchInfo"]["streamArn"],
        )
        for body in bodies
    ] == [
        (
            batch[0]["dynamodb"]["SequenceNumber"],
            batch[-1]["dynamodb"]["SequenceNumber"],
            len(batch),
            given_up.stack.outputs["SourceTableStreamArn"],
        )
        for batch in (first, second)
    ]
    assert {
        (
            body["requestContext"]["condition"],
            body["requestContext"]["approximateInvokeCount"],
            body["responseContext"]["functionError"],
        )
        for body in bodies
    } == {("RetryAttemptsExhausted", 2, "Unhandled")}
    assert _depth(aws, given_up.dead_letter_queue) == 0  # metadata only, so far


def _assert_parked_in_full(given_up: GivenUp, aws: boto3.Session) -> None:
    parked = _parked(aws, given_up.dead_letter_queue)
    assert [body["record"] for body in parked] == list(given_up.delivered)
    assert {
        (body["reason"], body["error"]["type"], body["error"]["message"], body["attempts"])
        for body in parked
    } == {("hydrated", "RetryAttemptsExhausted", "Unhandled", 2)}
    assert _depth(aws, given_up.on_failure_queue) == 0


def test_streams_dlq_hydrate_parks_the_given_up_records_in_full_and_empties_the_on_failure_queue(
    given_up: GivenUp, aws: boto3.Session, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "dlq",
            "hydrate",
            "--queue-url",
            given_up.dead_letter_queue,
            "--from-queue",
            given_up.on_failure_queue,
        ]
    )

    assert code == 0
    assert "hydrated 3 records from 2 on-failure records; expired 0" in capsys.readouterr().out
    _assert_parked_in_full(given_up, aws)


def test_the_templates_hydrate_function_run_through_the_local_mapping_parks_them_in_full(
    given_up: GivenUp, aws: boto3.Session
) -> None:
    invocations: list[Invocation] = []

    LocalMapping(given_up.stack, "HydrateFunction", on_invocation=invocations.append).run(
        exit_when_idle=0.5
    )

    assert sum(invocation.records for invocation in invocations) == 2  # the on-failure records
    assert all(invocation.succeeded for invocation in invocations)
    _assert_parked_in_full(given_up, aws)


def test_the_test_templates_hydrate_function_is_template_yamls_but_for_its_code_uri() -> None:
    def hydrate_function(path: Path) -> dict[str, Any]:
        function: dict[str, Any] = yaml_parse(path.read_text())["Resources"]["HydrateFunction"]
        del function["Properties"]["CodeUri"]
        return function

    assert hydrate_function(HYDRATE_TEMPLATE) == hydrate_function(TEMPLATE)


def test_template_yamls_records_given_up_at_its_age_limit_come_back_in_full_via_streams_run(
    moto_endpoint: str, aws: boto3.Session, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN template.yaml deployed and two children written to its table
    stack = deploy_template(TEMPLATE, endpoint_url=moto_endpoint, stack_name=unique_name)
    _put_children(aws, stack.outputs["SourceTableName"], CHILDREN[:2])
    stream = DynamoDBStreamSource(
        stack.outputs["SourceTableStreamArn"], client=aws.client("dynamodbstreams")
    )
    (shard,) = stream.list_shards()
    records = stream.open(shard.shard_id, Position("TRIM_HORIZON")).read(10).records
    invocations: list[Invocation] = []

    # WHEN its ProcessorFunction's mapping first runs 13 hours later, past the template's
    # MaximumRecordAgeInSeconds (12 h)
    def thirteen_hours_later() -> float:
        return time.time() + 13 * 3600

    LocalMapping(stack, clock=thirteen_hours_later, on_invocation=invocations.append).run(
        exit_when_idle=0.5
    )

    # THEN the mapping gives them up unprocessed, with metadata only
    assert invocations == []
    (on_failure,) = _peek(aws, stack.outputs["OnFailureQueueUrl"])
    assert on_failure["requestContext"]["condition"] == "RecordAgeExceeded"
    assert "responseContext" not in on_failure
    assert on_failure["DDBStreamBatchInfo"]["batchSize"] == 2

    # WHEN `streams run --function HydrateFunction` runs until idle
    capsys.readouterr()
    code = main(
        [
            "run",
            "--template",
            str(TEMPLATE),
            "--stack-name",
            unique_name,
            "--function",
            "HydrateFunction",
            "--exit-when-idle",
            "0.5",
        ]
    )

    # THEN both records are parked in full, and the on-failure record is gone
    output = capsys.readouterr().out
    assert code == 0, output
    assert "HydrateFunctionOnFailure: arn:aws:sqs:" in output
    assert "in all: 1 invocations, 1 records, 0 failed" in output
    parked = _parked(aws, stack.outputs["DeadLetterQueueUrl"])
    assert [body["record"] for body in parked] == records
    assert {(body["reason"], body["error"]["type"]) for body in parked} == {
        ("hydrated", "RecordAgeExceeded")
    }
    assert _depth(aws, stack.outputs["OnFailureQueueUrl"]) == 0
