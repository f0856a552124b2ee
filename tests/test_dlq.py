"""`streams dlq`: park with a failing handler, then read back and replay, on moto's SQS."""

from __future__ import annotations

import io
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger

from streams import Poison, SqsDeadLetterQueue, StreamProcessor
from streams.cli import main
from streams.cli.endpoint import Endpoint
from streams.local.endpoint import RecordedEndpoint, record_endpoint
from streams.ops.dlq import DeadLetterQueueReader, redrive
from tests import dlq_handlers
from tests.factories import FakeClock, dynamodb_record


def park(queue_url: str, records: list[dict[str, Any]]) -> None:
    """Run records through a handler that fails on all of them: every one is parked."""

    def broken(record: Any) -> None:
        raise Poison("bug in the handler")

    clock = FakeClock()
    processor = StreamProcessor(
        broken,
        dead_letters=SqsDeadLetterQueue(queue_url),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )
    assert processor.process({"Records": records}) == {"batchItemFailures": []}


@pytest.fixture
def queue(aws: boto3.Session, unique_name: str) -> str:
    url: str = aws.client("sqs").create_queue(QueueName=unique_name)["QueueUrl"]
    return url


@pytest.fixture(autouse=True)
def _fresh_handled() -> None:
    dlq_handlers.HANDLED.clear()


def depth(aws: boto3.Session, queue: str) -> int:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_redrive_replays_every_parked_record_and_empties_the_queue_then_does_nothing(
    aws: boto3.Session, queue: str
) -> None:
    park(queue, [dynamodb_record(n, child=f"c-{n % 3}") for n in range(1, 13)])
    assert depth(aws, queue) == 12

    assert (
        main(
            [
                "dlq",
                "redrive",
                "--any-source",
                "--queue-url",
                queue,
                "--handler",
                "tests.dlq_handlers:fixed",
            ]
        )
        == 0
    )

    assert sorted(seq for _, seq in dlq_handlers.HANDLED) == sorted(str(n) for n in range(1, 13))
    assert depth(aws, queue) == 0
    dlq_handlers.HANDLED.clear()
    assert (
        main(
            [
                "dlq",
                "redrive",
                "--any-source",
                "--queue-url",
                queue,
                "--handler",
                "tests.dlq_handlers:fixed",
            ]
        )
        == 0
    )
    assert dlq_handlers.HANDLED == []


def test_redrive_keeps_each_keys_original_order(aws: boto3.Session, queue: str) -> None:
    # Real sequence numbers have 21 to 40 digits: ordered as text, the longer ones starting
    # with a smaller digit would come first (c-1: 10**30 before 2 * 10**20).
    a, b, c, d = 2 * 10**20, 9 * 10**20 + 1, 10**30, 5 * 10**39
    e, f = 3 * 10**20, 10**21
    # Parked out of order (as separate batches would park them).
    for sequence in (c, a, d, b):
        park(queue, [dynamodb_record(sequence, child="c-1")])
    park(queue, [dynamodb_record(f, child="c-2"), dynamodb_record(e, child="c-2")])
    reader = DeadLetterQueueReader(queue, sqs=aws.client("sqs"))
    report = redrive(reader, dlq_handlers.fixed, dead_letters=SqsDeadLetterQueue(queue))
    assert report.ok
    per_key: dict[str, list[int]] = {}
    for key, sequence in dlq_handlers.HANDLED:
        per_key.setdefault(key, []).append(int(sequence))
    assert per_key == {"c-1": [a, b, c, d], "c-2": [e, f]}


def test_a_still_failing_handler_leaves_records_parked_with_their_new_error(
    aws: boto3.Session, queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    park(queue, [dynamodb_record(1), dynamodb_record(2)])
    code = main(
        [
            "dlq",
            "redrive",
            "--any-source",
            "--queue-url",
            queue,
            "--handler",
            "tests.dlq_handlers:still_broken",
        ]
    )
    assert code == 1
    assert "parked again 2" in capsys.readouterr().out
    assert depth(aws, queue) == 2
    reader = DeadLetterQueueReader(queue, sqs=aws.client("sqs"))
    messages = reader.receive_all()
    assert {m.body["error"]["message"] for m in messages} == {"still broken after the fix"}


def test_messages_in_flight_are_invisible_to_a_second_redrive(
    aws: boto3.Session, queue: str
) -> None:
    park(queue, [dynamodb_record(n) for n in range(1, 4)])
    first = DeadLetterQueueReader(queue, sqs=aws.client("sqs"))
    second = DeadLetterQueueReader(queue, sqs=aws.client("sqs"))
    in_flight = first.receive_all()
    assert len(in_flight) == 3
    assert second.receive_all() == []  # nothing to replay twice
    first.release(in_flight)
    assert len(second.receive_all()) == 3


def test_dry_run_replays_nothing_and_keeps_the_queue(
    aws: boto3.Session, queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    park(queue, [dynamodb_record(1), dynamodb_record(2)])
    capsys.readouterr()  # the parking function's own metrics
    code = main(
        [
            "dlq",
            "redrive",
            "--any-source",
            "--queue-url",
            queue,
            "--handler",
            "tests.dlq_handlers:fixed",
            "--dry-run",
        ]
    )
    assert code == 0
    assert dlq_handlers.HANDLED == []
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert len(DeadLetterQueueReader(queue, sqs=aws.client("sqs")).receive_all()) == 2


def test_list_shows_when_reason_error_and_keys_and_filters(
    queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    park(queue, [dynamodb_record(1, child="c-7"), dynamodb_record(2, child="c-8")])
    capsys.readouterr()
    assert main(["dlq", "list", "--queue-url", queue, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["keys"]["childId"] for row in rows) == ["c-7", "c-8"]
    assert {(row["reason"], row["errorType"]) for row in rows} == {("poison", "Poison")}
    assert all(row["failedAt"] and row["id"] for row in rows)

    assert main(["dlq", "list", "--queue-url", queue, "--json", "--reason", "too-old"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["dlq", "list", "--queue-url", queue]) == 0
    table = capsys.readouterr().out
    assert "2 parked records" in table
    assert all(row["id"] in table for row in rows)  # whole at 80 columns: `show` takes it


def test_show_takes_a_unique_prefix_of_an_id(
    queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    park(queue, [dynamodb_record(1, child="c-7")])
    capsys.readouterr()
    assert main(["dlq", "list", "--queue-url", queue, "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["dlq", "show", "--queue-url", queue, row["id"][:8]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == row["id"]


def test_show_prints_one_record_in_full(queue: str, capsys: pytest.CaptureFixture[str]) -> None:
    record = dynamodb_record(1, child="c-7")
    park(queue, [record])
    capsys.readouterr()
    main(["dlq", "list", "--queue-url", queue, "--json"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["dlq", "show", row["id"], "--queue-url", queue]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record"] == record
    assert "Traceback" in shown["error"]["traceback"]
    assert main(["dlq", "show", "no-such-id", "--queue-url", queue]) == 2


def test_purge_of_a_local_queue_needs_no_confirmation(aws: boto3.Session, queue: str) -> None:
    park(queue, [dynamodb_record(1)])
    assert main(["dlq", "purge", "--queue-url", queue]) == 0
    assert depth(aws, queue) == 0


@pytest.fixture
def on_aws(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> None:
    """The command believes it talks to AWS (no local endpoint), while botocore still sends
    every call to moto's server through AWS_ENDPOINT_URL, so no call can leave the machine."""
    assert os.environ["AWS_ENDPOINT_URL"] == moto_endpoint
    monkeypatch.setattr(
        "streams.cli.dlq.current_endpoint",
        lambda: Endpoint(url=None, origin="AWS", region="us-east-1"),
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.usefixtures("on_aws")
@pytest.mark.parametrize("case", [("no", 1, 1), ("purge", 0, 0)], ids=["no", "purge"])
def test_purge_on_aws_asks_first_and_deletes_only_when_told_purge(
    aws: boto3.Session,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, int],
) -> None:
    answer, code, left = case
    park(queue, [dynamodb_record(1)])
    asked: list[str] = []
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)

    assert main(["dlq", "purge", "--queue-url", queue]) == code

    assert asked == [f"Delete every parked record in {queue}? Type 'purge': "]
    assert depth(aws, queue) == left
    last_line = capsys.readouterr().out.splitlines()[-1]  # after the batch core's metrics
    assert last_line == ("nothing deleted" if left else f"purged {queue}")


@pytest.mark.usefixtures("on_aws")
def test_purge_on_aws_without_a_terminal_refuses_unless_yes(
    aws: boto3.Session,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    park(queue, [dynamodb_record(1)])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    assert main(["dlq", "purge", "--queue-url", queue]) == 2
    assert depth(aws, queue) == 1
    assert capsys.readouterr().err.endswith(
        "streams: error: refusing to purge a queue on AWS without --yes (no terminal to ask)\n"
    )
    assert main(["dlq", "purge", "--queue-url", queue, "--yes"]) == 0
    assert depth(aws, queue) == 0


def test_user_errors_are_one_line_and_non_zero(
    queue: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["dlq", "redrive", "--any-source", "--queue-url", queue, "--handler", "nope"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err
    assert (
        main(
            [
                "dlq",
                "redrive",
                "--any-source",
                "--queue-url",
                queue,
                "--handler",
                "no_such_module:f",
            ]
        )
        == 2
    )
    assert "cannot import" in capsys.readouterr().err
    monkeypatch.delenv("DEAD_LETTER_QUEUE_URL", raising=False)
    assert main(["dlq", "list"]) == 2
    assert "no dead-letter queue" in capsys.readouterr().err
    missing = queue + "-missing"
    assert main(["dlq", "list", "--queue-url", missing]) == 2
    assert "no such queue" in capsys.readouterr().err


def test_an_endpoint_that_is_gone_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as listener:  # a port just given back: nothing listens there
        listener.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", gone)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    code = main(["dlq", "list", "--queue-url", f"{gone}/123456789012/parked"])

    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"streams: error: cannot reach {gone}")


def test_the_endpoint_streams_local_up_recorded_is_used_with_its_own_credentials(
    queue: str,
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As in a second terminal on a fresh machine: no AWS_ENDPOINT_URL, no credentials of its own.
    park(queue, [dynamodb_record(1)])
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    record_endpoint(RecordedEndpoint(moto_endpoint, "us-east-1", None, None, os.getpid()))
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert main(["dlq", "list", "--queue-url", queue, "--json"]) == 0
    captured = capsys.readouterr()
    assert "from .streams/local.json" in captured.err
    assert len(captured.out.splitlines()) == 1
