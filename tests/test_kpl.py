"""KPL aggregates on the Lambda path: de-aggregated by aws-kinesis-agg inside `parse_records`."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from streams import KinesisRecord, RetryPolicy, StreamProcessor, Transient
from streams.deadletter import dead_letter_message
from streams.kpl import KPL_MAGIC, AggregationUnavailable, deaggregate, may_be_aggregate
from streams.records import parse_records
from tests.factories import FakeClock, MemorySink, kinesis_record
from tests.kcl_handlers import kpl_aggregate, kpl_module

ROOT = Path(__file__).resolve().parent.parent
USER_RECORDS = [("child-1", b'{"n": 1}'), ("child-2", b'{"n": 2}'), ("child-3", b'{"n": 3}')]


def aggregate_record(sequence: int, user_records: list[tuple[str, bytes]]) -> dict[str, Any]:
    partition_key, data = kpl_aggregate(user_records)
    record = kinesis_record(sequence, data)
    record["kinesis"]["partitionKey"] = partition_key
    return record


def event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def make(handler: Any, sink: MemorySink) -> StreamProcessor:
    clock = FakeClock()
    return StreamProcessor(
        handler,
        dead_letters=sink,
        retry=RetryPolicy(retries=0),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )


def test_aggregate_becomes_its_user_records_with_sub_sequence_numbers_in_order() -> None:
    seen: list[tuple[str, int | None, str, Any]] = []

    def handler(record: KinesisRecord) -> None:
        seen.append(
            (
                record.sequence_number,
                record.sub_sequence_number,
                record.partition_key,
                record.json(),
            )
        )

    plain = kinesis_record(1, b'{"n": 0}')
    aggregate = aggregate_record(2, USER_RECORDS)

    response = make(handler, MemorySink()).process(event(plain, aggregate))

    assert response == {"batchItemFailures": []}
    aggregate_sequence = aggregate["kinesis"]["sequenceNumber"]
    assert seen == [
        (plain["kinesis"]["sequenceNumber"], None, "pk", {"n": 0}),
        (aggregate_sequence, 0, "child-1", {"n": 1}),
        (aggregate_sequence, 1, "child-2", {"n": 2}),
        (aggregate_sequence, 2, "child-3", {"n": 3}),
    ]


def test_user_records_keep_the_aggregates_lambda_envelope() -> None:
    aggregate = aggregate_record(2, USER_RECORDS)

    views = parse_records(event(aggregate))

    for view in views:
        assert isinstance(view, KinesisRecord)
        assert view.event_id == aggregate["eventID"]
        assert view.event_source_arn == aggregate["eventSourceARN"]
        assert view.raw["awsRegion"] == aggregate["awsRegion"]
        assert view.approximate_arrival_time is not None
        assert isinstance(view.raw["kinesis"]["data"], str)


def test_failure_inside_an_aggregate_is_reported_at_the_aggregates_sequence_number() -> None:
    def handler(record: KinesisRecord) -> None:
        if record.sub_sequence_number == 1:
            raise Transient("not now")

    aggregate = aggregate_record(2, USER_RECORDS)

    response = make(handler, MemorySink()).process(event(kinesis_record(1), aggregate))

    # Lambda redelivers the whole aggregate: user record 0 runs again.
    assert response == {
        "batchItemFailures": [{"itemIdentifier": aggregate["kinesis"]["sequenceNumber"]}]
    }


def test_a_parked_user_record_carries_its_own_data_and_sub_sequence_number() -> None:
    def handler(record: KinesisRecord) -> None:
        if record.partition_key == "child-2":
            record.json()["missing"]  # a KeyError: poison

    sink = MemorySink()
    make(handler, sink).process(event(aggregate_record(2, USER_RECORDS)))

    (letter,) = sink.kept
    message = dead_letter_message(letter)
    assert message["subSequenceNumber"] == 1
    assert base64.b64decode(message["record"]["kinesis"]["data"]) == b'{"n": 2}'
    assert message["record"]["kinesis"]["partitionKey"] == "child-2"
    json.dumps(message)  # the message is JSON as it stands


def test_ordinary_records_never_load_the_aggregation_library() -> None:
    script = (
        "import sys, base64\n"
        "from streams.records import parse_records\n"
        "from tests.factories import kinesis_record\n"
        "views = parse_records({'Records': [kinesis_record(n, bytes([n])) for n in range(256)]})\n"
        "assert len(views) == 256\n"
        "assert 'aws_kinesis_agg' not in sys.modules and 'google.protobuf' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)


def test_only_data_starting_with_the_kpl_magic_is_a_candidate() -> None:
    assert may_be_aggregate(kinesis_record(1, KPL_MAGIC + b"anything"))
    assert not may_be_aggregate(kinesis_record(1, b'{"n": 1}'))
    assert not may_be_aggregate(kinesis_record(1, KPL_MAGIC[:3]))
    assert not may_be_aggregate({"kinesis": {"data": 7}})


def test_data_that_only_starts_like_an_aggregate_is_one_ordinary_record() -> None:
    record = kinesis_record(1, KPL_MAGIC + b"not protobuf, and no digest" * 2)

    (view,) = parse_records(event(record))

    assert view.raw is record
    assert view.sub_sequence_number is None


def test_an_aggregate_without_the_library_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aggregate = aggregate_record(2, USER_RECORDS)
    monkeypatch.setitem(sys.modules, "aws_kinesis_agg.deaggregator", None)

    with pytest.raises(AggregationUnavailable, match=r"pip install 'streams\[kpl\]'"):
        parse_records(event(aggregate))


def test_magic_bytes_without_a_matching_digest_pass_unchanged_without_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aws_kinesis_agg.deaggregator", None)
    record = kinesis_record(1, KPL_MAGIC + b"x" * 40)

    assert deaggregate(record) == [(record, None)]


def test_an_aggregate_whose_user_records_cannot_all_be_read_goes_on_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Built with the library's own protobuf classes: a key index past the key table, which the
    # library's splitter reports on stderr and stops at, dropping the rest.
    message = kpl_module("messages_pb2").AggregatedRecord()
    message.partition_key_table.append("child-1")
    message.records.add(partition_key_index=0, data=b'{"n": 1}')
    message.records.add(partition_key_index=5, data=b'{"n": 2}')
    payload = message.SerializeToString()
    record = kinesis_record(1, KPL_MAGIC + payload + hashlib.md5(payload).digest())

    assert deaggregate(record) == [(record, None)]
    assert "Unexpected exception during deaggregation" in capsys.readouterr().err


def test_loading_the_library_leaves_sys_path_as_it_was() -> None:
    before = list(sys.path)

    deaggregate(aggregate_record(2, USER_RECORDS))

    assert sys.path == before


_FIPS_HOST = """
import hashlib, json, sys

real_md5 = hashlib.md5

def md5(*args, usedforsecurity=True, **kwargs):
    # As OpenSSL in FIPS mode: MD5 only as a checksum.
    if usedforsecurity:
        raise ValueError("[digital envelope routines] unsupported: MD5 for security (FIPS)")
    return real_md5(*args, usedforsecurity=False, **kwargs)

hashlib.md5 = md5
from streams.kpl import AggregationUnavailable, deaggregate
from streams.records import parse_records

plain, mismatch, aggregate = json.load(sys.stdin)
assert deaggregate(plain) == [(plain, None)]
assert deaggregate(mismatch) == [(mismatch, None)]  # the checksum is computed, and differs
assert len(parse_records({"Records": [plain, mismatch]})) == 2
try:
    deaggregate(aggregate)
except AggregationUnavailable as error:
    print(error)
"""


def test_the_library_imports_and_checks_digests_on_a_fips_enforcing_host() -> None:
    """MD5 is the KPL format's checksum: computed with usedforsecurity=False."""
    plain = kinesis_record(1)
    mismatch = kinesis_record(2, KPL_MAGIC + b"x" * 40)
    aggregate = aggregate_record(3, USER_RECORDS)

    child = subprocess.run(
        [sys.executable, "-c", _FIPS_HOST],
        input=json.dumps([plain, mismatch, aggregate]),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert child.returncode == 0, child.stderr
    # aws-kinesis-agg itself computes MD5 without the flag: a real aggregate says why it stops.
    assert "KPL-aggregated and aws-kinesis-agg cannot load on this host" in child.stdout
    assert "FIPS" in child.stdout
