"""Instrumented functions for `streams run`'s tests (standard library only: they run in workers).

`handle` appends one JSON line per record it handles to `RECORD_FILE`: the item's `pk`, the
record's sequence number, the worker's pid, the invocation's request id, and the endpoint and
access key the function was given (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`); then it prints
`handled <n> records` (its log). `BEHAVIOUR` says
what else it does, once: the first invocation that meets the condition writes `ONCE_FILE`
(with its pid) before misbehaving, and later invocations see that file and behave.

- `record`: nothing else.
- `sleep-once`: before handling the record whose `pk` is `SLEEP_KEY`, sleeps for a minute (the
  test kills the mapping meanwhile).
- `hang-once`: the first invocation hangs, past any `Timeout`.
- `exit-once`: the first invocation ends its process with `os._exit(1)`.
- `raise-once`: the first invocation raises an error whose message repeats an attribute value
  (`RAISED_VALUE`).

`handle_kinesis` records Kinesis records the same way (their partition key as `pk`).

`record_and_fail` writes each event's records to `RECORD_FILE` (one JSON line per invocation:
`{"records": [...]}`, exactly as delivered), then raises: every invocation is a function error.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

_HANG_SECONDS = 3600
#: The value `raise-once` repeats in its error's message (distinctive: a match is a leak).
RAISED_VALUE = "VALUE-run-grumpy-5b1d"


def _record_line(pk: str, sequence_number: str, request_id: str) -> str:
    line = {
        "pk": pk,
        "sequenceNumber": sequence_number,
        "pid": os.getpid(),
        "requestId": request_id,
        "endpoint": os.environ.get("AWS_ENDPOINT_URL"),
        "accessKeyId": os.environ.get("AWS_ACCESS_KEY_ID"),
    }
    return json.dumps(line) + "\n"


def _first_time(once: Path) -> bool:
    """True for the first caller only (the file is created exclusively)."""
    try:
        with once.open("x") as marker:
            marker.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True


def handle(event: dict[str, Any], context: Any) -> None:
    behaviour = os.environ["BEHAVIOUR"]
    records = Path(os.environ["RECORD_FILE"])
    once = Path(os.environ["ONCE_FILE"])
    if behaviour in ("hang-once", "exit-once") and _first_time(once):
        if behaviour == "exit-once":
            os._exit(1)
        time.sleep(_HANG_SECONDS)
    if behaviour == "raise-once" and _first_time(once):
        raise ValueError(f"unknown status {RAISED_VALUE!r}")
    for record in event["Records"]:
        key = record["dynamodb"]["Keys"]["pk"]["S"]
        if behaviour == "sleep-once" and key == os.environ["SLEEP_KEY"] and _first_time(once):
            time.sleep(_HANG_SECONDS)
        with records.open("a") as log:
            sequence_number = record["dynamodb"]["SequenceNumber"]
            log.write(_record_line(key, sequence_number, context.aws_request_id))
    print(f"handled {len(event['Records'])} records")


def handle_kinesis(event: dict[str, Any], context: Any) -> None:
    """`record` for Kinesis records: the partition key stands for `pk`."""
    with Path(os.environ["RECORD_FILE"]).open("a") as log:
        for record in event["Records"]:
            kinesis = record["kinesis"]
            log.write(
                _record_line(
                    kinesis["partitionKey"], kinesis["sequenceNumber"], context.aws_request_id
                )
            )


class Unavailable(RuntimeError):
    """The failure `record_and_fail` raises on every invocation."""


def record_and_fail(event: dict[str, Any], context: Any) -> None:
    with Path(os.environ["RECORD_FILE"]).open("a") as log:
        log.write(json.dumps({"records": event["Records"]}) + "\n")
    raise Unavailable(f"downstream unavailable ({len(event['Records'])} records)")
