"""KPL-aggregated Kinesis records: recognised cheaply, split by `aws-kinesis-agg`.

The Kinesis Producer Library packs many user records into one Kinesis record (the KPL
aggregation format: 4 magic bytes, a protobuf `AggregatedRecord`, an MD5 digest). Every user
record inside keeps the aggregate's sequence number and gets a sub-sequence number, its position
in the aggregate.

The format is read by `aws-kinesis-agg` (AWS Labs; it needs `protobuf`), an optional extra
(`streams[kpl]`). Only an aggregate loads it: an ordinary record costs one string-prefix test.
When an aggregate arrives and the library is missing, `AggregationUnavailable` says so; the
record is never handed to a handler as if it were one user record.

The MD5 digest is a checksum, not security: it is computed with `usedforsecurity=False`, which
a FIPS-enforcing host allows. aws-kinesis-agg (1.2.3) computes it without, and cannot load on
such a host: an aggregate there is `AggregationUnavailable`, saying why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from streams.errors import UserError

__all__ = [
    "AGGREGATE_BASE64_PREFIX",
    "KPL_MAGIC",
    "AggregationUnavailable",
    "UserRecord",
    "deaggregate",
    "may_be_aggregate",
]

KPL_MAGIC = b"\xf3\x89\x9a\xc2"
_DIGEST_SIZE = hashlib.md5(usedforsecurity=False).digest_size
#: The base64 characters the magic bytes fix ("84maw"): every aggregate's `data` starts with them.
AGGREGATE_BASE64_PREFIX = base64.b64encode(KPL_MAGIC).decode()[:5]

#: One user record: the Lambda-shaped record that carries it, and its sub-sequence number (None
#: when the record was not an aggregate and comes back unchanged).
UserRecord = tuple[Mapping[str, Any], int | None]


class AggregationUnavailable(UserError):
    """A KPL aggregate arrived and `aws-kinesis-agg` is not installed."""


def may_be_aggregate(raw: Mapping[str, Any]) -> bool:
    """True when a Lambda-shaped Kinesis record's data starts like a KPL aggregate (no decoding)."""
    kinesis = raw.get("kinesis")
    if not isinstance(kinesis, Mapping):
        return False
    data = kinesis.get("data")
    return isinstance(data, str) and data.startswith(AGGREGATE_BASE64_PREFIX)


def deaggregate(raw: Mapping[str, Any]) -> list[UserRecord]:
    """The user records inside one Lambda-shaped Kinesis record, in order.

    Each comes back as the library shapes it: the aggregate's record with `kinesis.data` (base64
    text), `partitionKey`, `explicitHashKey` and `subSequenceNumber` of the user record. A record
    that is not a well-formed aggregate (no magic, digest mismatch, unreadable protobuf) comes back
    alone and unchanged, as KCL treats it too.
    """
    # The KPL format's own test first: a record that fails it (text that is not even base64
    # included, which the library would raise on) is an ordinary record, never split.
    if not _is_aggregate(raw):
        return [(raw, None)]
    split = _splitter()
    if isinstance(split, str):
        raise AggregationUnavailable(
            f"record {raw['kinesis'].get('sequenceNumber')} is KPL-aggregated and {split}"
        )
    user_records: list[UserRecord] = []
    for record in split([raw]):
        if record is raw:
            return [(raw, None)]
        kinesis = dict(record["kinesis"])
        # The library re-encodes data as base64 *bytes*; Lambda delivers base64 text.
        kinesis["data"] = kinesis["data"].decode("ascii")
        user_records.append(({**record, "kinesis": kinesis}, int(kinesis["subSequenceNumber"])))
    if len(user_records) != _declared_user_records(raw):
        # aws-kinesis-agg stops at a user record whose key index is out of range, prints the error
        # and drops the rest. Nothing is dropped here: the aggregate goes on whole (and a handler
        # that decodes it finds it poison).
        return [(raw, None)]
    return user_records


Splitter = Callable[[Iterable[Mapping[str, Any]]], Iterator[Mapping[str, Any]]]


def _splitter() -> Splitter | str:
    """aws-kinesis-agg's de-aggregator (imported on first use), or why it cannot be used."""
    # The library puts its own folder first on sys.path (its generated protobuf modules import
    # each other by bare name), where its `aggregator` and `deaggregator` modules would shadow a
    # user's modules of the same names. It needs the path only while it loads.
    saved_path = list(sys.path)
    try:
        module = importlib.import_module("aws_kinesis_agg.deaggregator")
    except ImportError:
        return (
            "aws-kinesis-agg is not installed: install the kpl extra "
            "(pip install 'streams[kpl]') wherever the handler runs"
        )
    except ValueError as error:  # hashlib's refusal of MD5 on a FIPS-enforcing host
        return (
            f"aws-kinesis-agg cannot load on this host ({error}): it computes MD5 without "
            "usedforsecurity=False, which FIPS mode refuses"
        )
    finally:
        sys.path[:] = saved_path
    split: Splitter = module.iter_deaggregate_records
    return split


def _declared_user_records(raw: Mapping[str, Any]) -> int:
    """How many user records the aggregate's protobuf holds."""
    messages = importlib.import_module("aws_kinesis_agg.messages_pb2")
    payload = base64.b64decode(raw["kinesis"]["data"])[len(KPL_MAGIC) : -_DIGEST_SIZE]
    return len(messages.AggregatedRecord.FromString(payload).records)


def _is_aggregate(raw: Mapping[str, Any]) -> bool:
    """The KPL format's own test: magic bytes, a payload, and an MD5 digest that matches it."""
    try:
        data = base64.b64decode(raw["kinesis"]["data"], validate=True)
    except binascii.Error:
        return False
    if len(data) <= len(KPL_MAGIC) + _DIGEST_SIZE:
        return False
    payload, digest = data[len(KPL_MAGIC) : -_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    checksum = hashlib.md5(payload, usedforsecurity=False).digest()
    return data.startswith(KPL_MAGIC) and checksum == digest
