"""Handlers that `streams kcl worker` runs in the tests, and the daemon's messages (GIVEN helpers).

`--handler tests.kcl_handlers:scripted` (the worker starts in the repository root). A record's
JSON data scripts what the handler does:

- `{"poison": true}`: raise `Poison`;
- `{"transient": N}`: raise `Transient` on the first N tries (N = -1: always);
- anything else: succeed.

Every success is appended as one JSON line to the file named by `KCL_TEST_JOURNAL`, so the test
sees what ran, in which order. The handler also prints and logs on purpose: the worker must keep
both off the protocol stream.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools import Logger

from streams import KinesisRecord, Poison, Transient

SHARD = "shardId-000000000007"
STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/updates"


def sequence(n: int) -> str:
    return f"{49650000000000000000000000000000000000000000000000000000 + n}"


def kcl_record(
    n: int,
    body: dict[str, Any] | None = None,
    *,
    data: bytes | None = None,
    partition_key: str = "pk",
    sub_sequence_number: int = 0,
    arrived: float | None = None,
) -> dict[str, Any]:
    """A record as the MultiLangDaemon writes it (JsonFriendlyRecord)."""
    payload = data if data is not None else json.dumps(body or {"n": n}).encode()
    return {
        "action": "record",
        "data": base64.b64encode(payload).decode(),
        "partitionKey": partition_key,
        "sequenceNumber": sequence(n),
        "subSequenceNumber": sub_sequence_number,
        "approximateArrivalTimestamp": int(
            (arrived if arrived is not None else time.time()) * 1000
        ),
    }


def process_records(*records: dict[str, Any]) -> dict[str, Any]:
    return {"action": "processRecords", "millisBehindLatest": 0, "records": list(records)}


def checkpoint_reply(request: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    """What the daemon answers to a checkpoint request (`error`: the Java exception's name)."""
    return {
        "action": "checkpoint",
        "sequenceNumber": request["sequenceNumber"],
        "subSequenceNumber": request["subSequenceNumber"],
        "error": error,
    }


def checkpoint_request(n: int | None, sub_sequence_number: int | None = 0) -> dict[str, Any]:
    return {
        "action": "checkpoint",
        "sequenceNumber": None if n is None else sequence(n),
        "subSequenceNumber": sub_sequence_number,
    }


def status(action: str) -> dict[str, Any]:
    return {"action": "status", "responseFor": action}


_logger = Logger(service="kcl-test-handler")
_tries: dict[tuple[str, int | None], int] = {}


def scripted(record: KinesisRecord) -> None:
    print(f"handler saw {record.sequence_number}")  # stdout noise, on purpose
    _logger.info("handling", extra={"sequenceNumber": record.sequence_number})
    body = record.json()
    key = (record.sequence_number, record.sub_sequence_number)
    _tries[key] = tries = _tries.get(key, 0) + 1
    if body.get("poison"):
        raise Poison("scripted poison")
    transient = int(body.get("transient", 0))
    if transient == -1 or tries <= transient:
        raise Transient(f"scripted transient failure {tries}")
    with open(os.environ["KCL_TEST_JOURNAL"], "a", encoding="utf-8") as journal:
        journal.write(json.dumps(_seen(record, tries)) + "\n")


def _seen(record: KinesisRecord, tries: int) -> dict[str, Any]:
    return {
        "sequenceNumber": record.sequence_number,
        "subSequenceNumber": record.sub_sequence_number,
        "partitionKey": record.partition_key,
        "data": record.json(),
        "tries": tries,
        "raw": record.raw,
    }


def kpl_aggregate(user_records: Sequence[tuple[str, bytes]]) -> tuple[str, bytes]:
    """One KPL aggregate built by aws-kinesis-agg's aggregator: (partition key, data bytes)."""
    records = kpl_module("aggregator").RecordAggregator()
    for partition_key, data in user_records:
        assert records.add_user_record(partition_key, data) is None, "one aggregate only"
    partition_key, _, data = records.clear_and_get().get_contents()
    return str(partition_key), bytes(data)


def kpl_module(name: str) -> Any:
    """A module of aws-kinesis-agg, leaving the test process's sys.path as it was."""
    # The library's modules find each other by putting its folder on sys.path when its
    # (de)aggregator loads (see streams.kpl).
    saved_path = list(sys.path)
    try:
        importlib.import_module("aws_kinesis_agg.aggregator")
        return importlib.import_module(f"aws_kinesis_agg.{name}")
    finally:
        sys.path[:] = saved_path
