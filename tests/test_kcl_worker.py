"""`streams kcl worker` driven over pipes as KCL's MultiLangDaemon drives it.

Each test starts the worker as a child process (the real amazon-kclpy loop runs in it), writes
the daemon's messages to its stdin and reads back every line it writes to stdout: `status`
responses and `checkpoint` requests, nothing else. Parked records are read back from a real SQS
queue on moto's server.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.kcl_handlers import (
    SHARD,
    STREAM_ARN,
    checkpoint_reply,
    checkpoint_request,
    kcl_record,
    kpl_aggregate,
    process_records,
    sequence,
    status,
)

ROOT = Path(__file__).resolve().parent.parent
#: Not a timing assertion: how long a read waits before the test fails instead of hanging.
NO_ANSWER = 60.0


class Worker:
    """The worker process, with the daemon's side of the pipes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "kcl", "worker", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout_lines.append(line)
            if line.strip():
                self._messages.put(json.loads(line))
        self._messages.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr_lines.extend(self.process.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any] | None:
        """The next message the worker writes; None once its stdout has closed."""
        try:
            return self._messages.get(timeout=NO_ANSWER)
        except queue.Empty:
            self.process.kill()
            pytest.fail(f"the worker did not answer; its stderr:\n{self.stderr}")

    def initialize(self) -> None:
        self.send(
            {
                "action": "initialize",
                "shardId": SHARD,
                "sequenceNumber": "TRIM_HORIZON",
                "subSequenceNumber": 0,
            }
        )
        assert self.receive() == status("initialize")

    def expect_checkpoint(self, request: dict[str, Any], error: str | None = None) -> None:
        assert self.receive() == request
        self.send(checkpoint_reply(request, error))

    def release(self) -> None:
        """Stop the process if it still runs; close the pipes once everything is read."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(timeout=NO_ANSWER)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def close(self) -> int:
        """End of stdin (the daemon's way to stop a child): the exit status, all output read."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        code = self.process.wait(timeout=NO_ANSWER)
        self.release()
        assert self.receive() is None, "the worker wrote more than the test expected"
        # Every line on stdout is a protocol message (amazon-kclpy frames each with blank lines).
        for line in self.stdout_lines:
            if line.strip():
                assert json.loads(line)["action"] in {"status", "checkpoint"}, line
        return code


@pytest.fixture
def dead_letter_queue(aws: boto3.Session, unique_name: str) -> str:
    return aws.client("sqs").create_queue(QueueName=unique_name)["QueueUrl"]


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal.jsonl"


@pytest.fixture
def start_worker(dead_letter_queue: str, journal: Path, moto_endpoint: str) -> Iterator[Any]:
    workers: list[Worker] = []
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "KCL_TEST_JOURNAL": str(journal),
        "POWERTOOLS_SERVICE_NAME": "kcl-test",
    }

    def start(*extra: str) -> Worker:
        worker = Worker(
            "--handler",
            "tests.kcl_handlers:scripted",
            "--stream-arn",
            STREAM_ARN,
            "--queue-url",
            dead_letter_queue,
            "--retries",
            "0",
            "--backoff",
            "0",
            *extra,
            env=env,
        )
        workers.append(worker)
        worker.initialize()
        return worker

    yield start
    for worker in workers:
        worker.release()


def handled(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines()]


def dead_letters(aws: boto3.Session, queue_url: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    ).get("Messages", [])
    return [json.loads(message["Body"]) for message in messages]


def test_poison_record_is_parked_in_full_while_its_neighbours_are_processed_and_checkpointed(
    start_worker: Any, journal: Path, aws: boto3.Session, dead_letter_queue: str
) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1), kcl_record(2, {"poison": True}), kcl_record(3)))

    worker.expect_checkpoint(checkpoint_request(3))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0

    assert [seen["sequenceNumber"] for seen in handled(journal)] == [sequence(1), sequence(3)]
    (letter,) = dead_letters(aws, dead_letter_queue)
    assert letter["reason"] == "poison"
    assert letter["shardId"] == SHARD
    assert letter["sequenceNumber"] == sequence(2)
    assert letter["error"]["type"] == "Poison"
    record = letter["record"]
    assert record["eventID"] == f"{SHARD}:{sequence(2)}"
    assert record["eventSource"] == "aws:kinesis"
    assert record["eventSourceARN"] == STREAM_ARN
    assert record["awsRegion"] == "us-east-1"
    assert json.loads(base64.b64decode(record["kinesis"]["data"])) == {"poison": True}


def test_the_worker_handles_partition_keys_at_once_with_concurrency(
    start_worker: Any, journal: Path
) -> None:
    # GIVEN a worker with --concurrency 3, and records of three partition keys
    worker = start_worker("--concurrency", "3")
    keys = ["a", "b", "c"] * 4
    worker.send(process_records(*(kcl_record(n, partition_key=keys[n - 1]) for n in range(1, 13))))

    # THEN the batch is checkpointed at its end, every record handled once, in order per key
    worker.expect_checkpoint(checkpoint_request(12))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0
    seen = [entry["sequenceNumber"] for entry in handled(journal)]
    assert sorted(seen) == [sequence(n) for n in range(1, 13)]
    for key in "abc":
        mine = [sequence(n) for n in range(1, 13) if keys[n - 1] == key]
        assert [s for s in seen if s in mine] == mine


def test_handler_sees_the_lambda_record_shape(start_worker: Any, journal: Path) -> None:
    worker = start_worker()
    record = kcl_record(1, partition_key="child-7", arrived=1_795_000_000.25)
    worker.send(process_records(record))
    worker.expect_checkpoint(checkpoint_request(1))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0

    (seen,) = handled(journal)
    assert seen["raw"] == {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "child-7",
            "sequenceNumber": sequence(1),
            "data": record["data"],
            "approximateArrivalTimestamp": 1_795_000_000.25,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{SHARD}:{sequence(1)}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": None,
        "awsRegion": "us-east-1",
        "eventSourceARN": STREAM_ARN,
    }


@pytest.mark.parametrize("error", ["ThrottlingException", "KinesisClientLibDependencyException"])
def test_retryable_checkpoint_error_is_retried_until_the_checkpoint_succeeds(
    start_worker: Any, error: str
) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1), kcl_record(2)))

    worker.expect_checkpoint(checkpoint_request(2), error)
    worker.expect_checkpoint(checkpoint_request(2), error)
    worker.expect_checkpoint(checkpoint_request(2))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0


def test_shutdown_exception_stops_without_retrying_and_lease_lost_never_checkpoints(
    start_worker: Any,
) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1)))
    worker.expect_checkpoint(checkpoint_request(1), "ShutdownException")
    assert worker.receive() == status("processRecords")

    worker.send({"action": "leaseLost"})
    assert worker.receive() == status("leaseLost")
    assert worker.close() == 0


def test_any_other_checkpoint_error_ends_the_worker_before_it_reports_the_batch_done(
    start_worker: Any,
) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1)))
    worker.expect_checkpoint(checkpoint_request(1), "InvalidStateException")

    assert worker.close() == 1
    assert "InvalidStateException" in worker.stderr
    assert "fatal error" in worker.stderr


def test_shard_ended_always_checkpoints_the_end_of_the_shard(start_worker: Any) -> None:
    worker = start_worker()
    worker.send({"action": "shardEnded"})
    worker.expect_checkpoint(checkpoint_request(None, None), "ThrottlingException")
    worker.expect_checkpoint(checkpoint_request(None, None))
    assert worker.receive() == status("shardEnded")
    assert worker.close() == 0


def test_shutdown_requested_checkpoints_the_last_record_done(start_worker: Any) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1), kcl_record(2)))
    worker.expect_checkpoint(checkpoint_request(2))
    assert worker.receive() == status("processRecords")

    worker.send({"action": "shutdownRequested"})
    worker.expect_checkpoint(checkpoint_request(2))
    assert worker.receive() == status("shutdownRequested")
    assert worker.close() == 0


def test_transient_record_holds_the_shard_and_records_before_it_are_checkpointed_first(
    start_worker: Any, journal: Path
) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1), kcl_record(2, {"transient": 2}), kcl_record(3)))

    # Held on record 2: record 1 is checkpointed before the wait, once.
    worker.expect_checkpoint(checkpoint_request(1))
    worker.expect_checkpoint(checkpoint_request(3))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0
    assert [(seen["sequenceNumber"], seen["tries"]) for seen in handled(journal)] == [
        (sequence(1), 1),
        (sequence(2), 3),
        (sequence(3), 1),
    ]


def test_record_failing_past_the_age_limit_is_parked_too_old_and_the_shard_moves_on(
    start_worker: Any, journal: Path, aws: boto3.Session, dead_letter_queue: str
) -> None:
    worker = start_worker("--max-record-age", "3600")
    stale = time.time() - 7200
    worker.send(process_records(kcl_record(1, {"transient": -1}, arrived=stale), kcl_record(2)))

    worker.expect_checkpoint(checkpoint_request(2))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0
    assert [seen["sequenceNumber"] for seen in handled(journal)] == [sequence(2)]
    (letter,) = dead_letters(aws, dead_letter_queue)
    assert (letter["reason"], letter["sequenceNumber"]) == ("too-old", sequence(1))


def test_prints_logs_and_metrics_go_to_stderr_never_to_the_protocol_stream(
    start_worker: Any,
) -> None:
    worker = start_worker()
    worker.send(process_records(kcl_record(1)))
    worker.expect_checkpoint(checkpoint_request(1))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0  # checks that every stdout line is a protocol message

    assert f"handler saw {sequence(1)}" in worker.stderr
    assert '"message":"handling"' in worker.stderr.replace(" ", "")
    assert '"RecordsProcessed"' in worker.stderr  # Powertools' EMF document


def test_kpl_aggregate_is_deaggregated_and_checkpointed_at_the_position_kcl_delivered(
    start_worker: Any, journal: Path
) -> None:
    partition_key, data = kpl_aggregate(
        [("child-1", b'{"n": 1}'), ("child-2", b'{"n": 2}'), ("child-3", b'{"n": 3}')]
    )
    worker = start_worker()
    worker.send(
        process_records(kcl_record(1), kcl_record(2, data=data, partition_key=partition_key))
    )

    worker.expect_checkpoint(checkpoint_request(2, 0))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0
    seen = [
        (s["sequenceNumber"], s["subSequenceNumber"], s["partitionKey"], s["data"])
        for s in handled(journal)
    ]
    assert seen == [
        (sequence(1), 0, "pk", {"n": 1}),
        (sequence(2), 0, "child-1", {"n": 1}),
        (sequence(2), 1, "child-2", {"n": 2}),
        (sequence(2), 2, "child-3", {"n": 3}),
    ]


def test_user_records_kcl_already_split_are_checkpointed_with_their_sub_sequence_numbers(
    start_worker: Any, journal: Path
) -> None:
    worker = start_worker()
    worker.send(
        process_records(
            kcl_record(5, {"n": 0}, sub_sequence_number=0),
            kcl_record(5, {"n": 1}, sub_sequence_number=1),
        )
    )
    worker.expect_checkpoint(checkpoint_request(5, 1))
    assert worker.receive() == status("processRecords")
    assert worker.close() == 0
    assert [s["subSequenceNumber"] for s in handled(journal)] == [0, 1]
