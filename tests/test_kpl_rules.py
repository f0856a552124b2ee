"""KPL rules that hold with the aggregation library and without it (found by `make mutation`)."""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import pytest

from streams.kpl import KPL_MAGIC, AggregationUnavailable, deaggregate, may_be_aggregate
from streams.records import parse_records
from tests.factories import dynamodb_record, kinesis_record
from tests.kcl_handlers import kpl_aggregate

USER_RECORDS = [("child-1", b'{"n": 1}'), ("child-2", b'{"n": 2}')]


def aggregate_record(sequence: int) -> dict[str, Any]:
    partition_key, data = kpl_aggregate(USER_RECORDS)
    record = kinesis_record(sequence, data)
    record["kinesis"]["partitionKey"] = partition_key
    return record


@pytest.fixture(params=["with the library", "without the library"])
def library(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "without the library":
        monkeypatch.setitem(sys.modules, "aws_kinesis_agg.deaggregator", None)
    return str(request.param)


def test_a_record_without_kinesis_data_is_never_an_aggregate_candidate() -> None:
    assert not may_be_aggregate(dynamodb_record(1))
    assert not may_be_aggregate({"kinesis": "not an object"})


@pytest.mark.parametrize(
    "data",
    [
        KPL_MAGIC + hashlib.md5(b"").digest(),  # magic and the digest of an empty payload
        KPL_MAGIC + b"short",
        KPL_MAGIC,
    ],
    ids=["empty payload", "shorter than a digest", "magic alone"],
)
def test_magic_and_a_digest_with_no_payload_between_is_an_ordinary_record(
    library: str, data: bytes
) -> None:
    record = kinesis_record(1, data)

    assert deaggregate(record) == [(record, None)]


def test_the_missing_library_error_names_the_record_and_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aws_kinesis_agg.deaggregator", None)
    aggregate = aggregate_record(7)

    with pytest.raises(AggregationUnavailable) as raised:
        deaggregate(aggregate)

    assert str(raised.value) == (
        f"record {aggregate['kinesis']['sequenceNumber']} is KPL-aggregated and "
        "aws-kinesis-agg is not installed: install the kpl extra "
        "(pip install 'streams[kpl]') wherever the handler runs"
    )


def test_on_a_fips_host_the_digest_is_still_checked_and_the_error_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In this process, beside test_kpl's FIPS host in a child process: hashlib as OpenSSL in FIPS
    mode (MD5 only with usedforsecurity=False), so the library cannot load."""
    mismatch = kinesis_record(1, KPL_MAGIC + b"x" * 40)
    aggregate = aggregate_record(2)
    real_md5 = hashlib.md5

    def fips_md5(*args: Any, usedforsecurity: bool = True, **kwargs: Any) -> Any:
        if usedforsecurity:
            raise ValueError("[digital envelope routines] unsupported: MD5 for security (FIPS)")
        return real_md5(*args, usedforsecurity=False, **kwargs)

    monkeypatch.setattr(hashlib, "md5", fips_md5)
    for name in [name for name in sys.modules if name.startswith("aws_kinesis_agg")]:
        monkeypatch.delitem(sys.modules, name)

    assert deaggregate(mismatch) == [(mismatch, None)]
    with pytest.raises(AggregationUnavailable) as raised:
        deaggregate(aggregate)

    message = str(raised.value)
    assert message.startswith(
        f"record {aggregate['kinesis']['sequenceNumber']} is KPL-aggregated and "
        "aws-kinesis-agg cannot load on this host ("
    )
    assert message.endswith(
        "): it computes MD5 without usedforsecurity=False, which FIPS mode refuses"
    )


def test_ordinary_kinesis_records_never_load_the_aggregation_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In this process, beside test_kpl's check in a child process."""
    for name in [name for name in sys.modules if name.startswith("aws_kinesis_agg")]:
        monkeypatch.delitem(sys.modules, name)
    records = [kinesis_record(n, bytes([n])) for n in range(50)]

    views = parse_records({"Records": records})

    assert [view.raw for view in views] == records
    assert not [name for name in sys.modules if name.startswith("aws_kinesis_agg")]


def test_data_that_starts_like_an_aggregate_but_is_not_base64_is_an_ordinary_record() -> None:
    """The library raises binascii.Error on such data; the KPL test comes first and refuses
    it, so the handler gets the record (and may find it poison) instead of a traceback."""
    record = kinesis_record(7, b"")
    record["kinesis"]["data"] = "84mawg!!not base64"
    assert deaggregate(record) == [(record, None)]
