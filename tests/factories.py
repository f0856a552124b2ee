"""Event factories and test doubles for the batch core (GIVEN helpers)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.deadletter import DeadLetter

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Children/stream/2026-11-21T00:00:00.000"
KINESIS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/updates"
NOW = 1_795_000_000.0  # the fake clock's epoch seconds


def dynamodb_record(
    sequence: int,
    *,
    child: str = "c-1",
    event_name: str = "MODIFY",
    new_image: dict[str, Any] | None = None,
    created: float = NOW - 1,
) -> dict[str, Any]:
    keys = {"childId": {"S": child}}
    data: dict[str, Any] = {
        "ApproximateCreationDateTime": created,
        "Keys": keys,
        "SequenceNumber": str(sequence),
        "SizeBytes": 50,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if event_name != "REMOVE":
        data["NewImage"] = (
            new_image
            if new_image is not None
            else {**keys, "status": {"S": "nice"}, "secret": {"S": "do not log me"}}
        )
    return {
        "eventID": f"{sequence:032x}",
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": data,
        "eventSourceARN": STREAM_ARN,
    }


def dynamodb_event(count: int, *, first: int = 1, **kwargs: Any) -> dict[str, Any]:
    return {"Records": [dynamodb_record(first + i, **kwargs) for i in range(count)]}


def kinesis_record(
    sequence: int, data: bytes = b'{"n": 1}', *, shard: str = "shardId-000000000000"
) -> dict[str, Any]:
    number = f"{sequence:056d}"
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": "pk",
            "sequenceNumber": number,
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": NOW - 1.5,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard}:{number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
        "awsRegion": "us-east-1",
        "eventSourceARN": KINESIS_ARN,
    }


@dataclass
class FakeClock:
    """Time that moves only when the code under test sleeps (or the test says so)."""

    now: float = NOW
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeContext:
    """A Lambda context whose remaining time follows the fake clock."""

    clock: FakeClock
    deadline: float
    function_name: str = "processor"
    function_version: str = "$LATEST"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - self.clock.now) * 1000)


@dataclass
class MemorySink:
    """A dead-letter sink in memory (our own seam, not an AWS API): keeps or refuses letters."""

    refuse: Callable[[DeadLetter], bool] = lambda letter: False
    kept: list[DeadLetter] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    def park(self, letters: Sequence[DeadLetter]) -> list[str | None]:
        self.calls.append(len(letters))
        ids: list[str | None] = []
        for letter in letters:
            if self.refuse(letter):
                ids.append(None)
            else:
                self.kept.append(letter)
                ids.append(f"memory-{len(self.kept)}")
        return ids


@dataclass
class ScriptedHandler:
    """A handler whose behaviour per sequence number is scripted; records every call."""

    script: dict[str, Callable[[int], None]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, record: Any) -> None:
        sequence = record.sequence_number
        self.calls.append(sequence)
        action = self.script.get(sequence)
        if action is not None:
            action(self.calls.count(sequence))
