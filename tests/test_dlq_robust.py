"""`streams dlq` is never stopped by one bad message, follows overflow pointers only into its
own bucket, prints queue text as text, and replays only the stream it is told to expect."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import boto3
import pytest

from streams.cli import main
from streams.local.endpoint import RecordedEndpoint, record_endpoint
from streams.local.stack import deploy_template
from tests import dlq_handlers
from tests.factories import STREAM_ARN, dynamodb_record
from tests.test_dlq import depth, park

_MALFORMED_BODIES = {
    "not JSON": "{this is not json",
    "not an object": "[1, 2, 3]",
    "record not an object": json.dumps({"version": 1, "record": "VALUE-secret-1"}),
    "subSequenceNumber not a number": json.dumps(
        {"version": 1, "record": {}, "subSequenceNumber": "VALUE-x"}
    ),
    "pointer object missing": json.dumps(
        {"version": 1, "overflow": {"bucket": "dlq-overflow", "key": "dead-letters/gone.json"}}
    ),
    "pointer elsewhere": json.dumps(
        {"version": 1, "overflow": {"bucket": "dlq-overflow", "key": "private/payroll.csv"}}
    ),
    "pointer to another bucket": json.dumps(
        {"version": 1, "overflow": {"bucket": "someone-else", "key": "dead-letters/x.json"}}
    ),
}


@pytest.fixture
def queue(aws: boto3.Session, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    url: str = aws.client("sqs").create_queue(QueueName=unique_name)["QueueUrl"]
    aws.client("s3").create_bucket(Bucket="dlq-overflow")
    monkeypatch.setenv("DEAD_LETTER_BUCKET", "dlq-overflow")
    dlq_handlers.HANDLED.clear()
    return url


def _send(aws: boto3.Session, queue: str, bodies: list[str]) -> None:
    for body in bodies:
        aws.client("sqs").send_message(QueueUrl=queue, MessageBody=body)


def test_each_malformed_message_is_listed_with_why_and_the_rest_still_listed(
    aws: boto3.Session,
    queue: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    park(queue, [dynamodb_record(1, child="c-1")])
    _send(aws, queue, list(_MALFORMED_BODIES.values()))
    capsys.readouterr()

    assert main(["dlq", "list", "--queue-url", queue, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 + len(_MALFORMED_BODIES)
    malformed = [row for row in rows if row["reason"] == "malformed"]
    assert len(malformed) == len(_MALFORMED_BODIES)
    assert all(row["errorType"] and "VALUE-" not in row["errorType"] for row in malformed)
    assert [row["keys"] for row in rows if row["reason"] == "poison"] == [{"childId": "c-1"}]
    monkeypatch.setenv("COLUMNS", "200")  # the table, too, wide enough not to fold words
    assert main(["dlq", "list", "--queue-url", queue]) == 0
    assert "malformed" in capsys.readouterr().out
    assert depth(aws, queue) == 1 + len(_MALFORMED_BODIES)


def test_redrive_replays_the_good_counts_the_malformed_as_failed_and_leaves_them_visible(
    aws: boto3.Session, queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    park(queue, [dynamodb_record(1, child="c-1"), dynamodb_record(2, child="c-2")])
    _send(aws, queue, list(_MALFORMED_BODIES.values()))
    command = ["dlq", "redrive", "--any-source", "--queue-url", queue]

    assert main([*command, "--handler", "tests.dlq_handlers:fixed"]) == 1
    out = capsys.readouterr()
    assert "replayed 2" in out.out and f"malformed {len(_MALFORMED_BODIES)}" in out.out
    assert sorted(key for key, _ in dlq_handlers.HANDLED) == ["c-1", "c-2"]
    # Released at once, not after the visibility timeout: a second run sees them all again.
    visible = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert int(visible) == len(_MALFORMED_BODIES)


def test_an_overflow_pointer_outside_the_bucket_is_never_fetched(
    aws: boto3.Session, queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    aws.client("s3").put_object(
        Bucket="dlq-overflow", Key="private/payroll.csv", Body=b"VALUE-payroll"
    )
    _send(aws, queue, [_MALFORMED_BODIES["pointer elsewhere"]])
    assert main(["dlq", "list", "--queue-url", queue, "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["reason"] == "malformed" and "not followed" in row["errorType"]
    assert main(["dlq", "show", "--queue-url", queue, row["id"]]) == 0
    assert "VALUE-payroll" not in capsys.readouterr().out


def test_keys_holding_rich_markup_are_printed_as_text(
    aws: boto3.Session,
    queue: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    park(queue, [dynamodb_record(1, child="[/b][red]c-1")])
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["dlq", "list", "--queue-url", queue]) == 0
    assert "[/b][red]c-1" in capsys.readouterr().out


def test_redrive_replays_only_the_expected_streams_records(
    aws: boto3.Session, queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = dynamodb_record(2, child="c-2")
    other["eventSourceARN"] = STREAM_ARN.replace("stream/", "stream/other-")
    park(queue, [dynamodb_record(1, child="c-1")])
    park(queue, [other])
    command = ["dlq", "redrive", "--queue-url", queue, "--handler", "tests.dlq_handlers:fixed"]

    assert main(command) == 2  # no stack recorded: which stream is for the user to say
    assert "--stream-arn" in capsys.readouterr().err
    assert main([*command, "--stream-arn", STREAM_ARN]) == 1
    assert "other stream 1" in capsys.readouterr().out
    assert [key for key, _ in dlq_handlers.HANDLED] == ["c-1"]
    assert main([*command, "--any-source"]) == 0
    assert [key for key, _ in dlq_handlers.HANDLED] == ["c-1", "c-2"]


def test_a_dry_run_lists_only_what_the_redrive_would_replay(
    queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = dynamodb_record(2, child="c-2")
    other["eventSourceARN"] = STREAM_ARN.replace("stream/", "stream/other-")
    park(queue, [dynamodb_record(1, child="c-1")])
    park(queue, [other])
    capsys.readouterr()
    command = ["dlq", "redrive", "--queue-url", queue, "--handler", "tests.dlq_handlers:fixed"]
    assert main([*command, "--stream-arn", STREAM_ARN, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["keys"] for line in out.splitlines()] == [{"childId": "c-1"}]
    assert "1 records would be replayed; left parked: 1 of another stream, 0 malformed" in err
    assert dlq_handlers.HANDLED == []


def test_the_readmes_redrive_of_the_worked_example_works_against_the_recorded_stack(  # noqa: PLR0917
    moto_endpoint: str,
    aws: boto3.Session,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`streams dlq redrive --handler processor.app:handle`, as written: the example's module
    needs DELIVERY_TABLE_NAME, a region and the endpoint, which the recorded stack gives."""
    template = Path(__file__).resolve().parent.parent / "template.yaml"
    stack = deploy_template(template, endpoint_url=moto_endpoint, stack_name=unique_name)
    monkeypatch.chdir(tmp_path)
    record_endpoint(
        RecordedEndpoint(moto_endpoint, "us-east-1", unique_name, str(template), os.getpid())
    )
    record = dynamodb_record(1, child="c-9")
    record["eventSourceARN"] = stack.outputs["SourceTableStreamArn"]
    record["dynamodb"]["NewImage"]["address"] = {"M": {"street": {"S": "1 Snow Lane"}}}
    park(stack.outputs["DeadLetterQueueUrl"], [record])
    # The environment a user's shell has: none of the function's variables, no endpoint.
    function = stack.function("ProcessorFunction")
    aws_names = ["AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"]
    aws_names += ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    for name in [*function.environment, *aws_names]:
        monkeypatch.setenv(name, "")  # so that teardown removes what the command sets
        monkeypatch.delenv(name)
    monkeypatch.delitem(sys.modules, "processor.app", raising=False)
    capsys.readouterr()

    assert main(["dlq", "redrive", "--handler", "processor.app:handle"]) == 0
    assert "replayed 1" in capsys.readouterr().out
    items = aws.client("dynamodb").scan(TableName=stack.outputs["DeliveryTableName"])["Items"]
    assert [item["childId"]["S"] for item in items] == ["c-9"]
