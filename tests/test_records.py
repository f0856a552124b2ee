"""Record views: every field checked against an independent oracle (boto3, the raw JSON)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streams import DynamoDBRecord, KinesisRecord, RecordDecodeError
from streams.errors import EventError
from streams.records import Image, decode_attribute_value, parse_records

EVENTS = Path(__file__).parent / "events"


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


# --- the oracle: boto3's TypeDeserializer once base64 binary is decoded, Binary unwrapped ----


def _bytes_for_boto3(value: Any) -> Any:
    """A Lambda attribute value as boto3's low-level client would hand it over (bytes for B)."""
    ((tag, inner),) = value.items()
    if tag == "B":
        return {"B": base64.b64decode(inner)}
    if tag == "BS":
        return {"BS": [base64.b64decode(member) for member in inner]}
    if tag == "M":
        return {"M": {name: _bytes_for_boto3(member) for name, member in inner.items()}}
    if tag == "L":
        return {"L": [_bytes_for_boto3(member) for member in inner]}
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Binary):
        return value.value
    if isinstance(value, dict):
        return {name: _unwrap(inner) for name, inner in value.items()}
    if isinstance(value, list):
        return [_unwrap(inner) for inner in value]
    if isinstance(value, set):
        return {_unwrap(inner) for inner in value}
    return value


def oracle(value: Any) -> Any:
    return _unwrap(TypeDeserializer().deserialize(_bytes_for_boto3(value)))


# --- attribute-value strategies: nested maps, lists, every set type, binary, 38-digit numbers -


def _number_text(number: Decimal) -> str:
    return str(number)


numbers = st.one_of(
    st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=None)
    .filter(lambda d: len(d.as_tuple().digits) <= 38 and -120 < d.adjusted() < 120)
    .map(_number_text),
    st.sampled_from(["0", "-0", "1E+5", "1.000", "12345678901234567890123456789012345678"]),
)
binaries = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
texts = st.text(max_size=20)

scalars = st.one_of(
    texts.map(lambda s: {"S": s}),
    numbers.map(lambda n: {"N": n}),
    binaries.map(lambda b: {"B": b}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    st.lists(texts, min_size=1, max_size=5, unique=True).map(lambda v: {"SS": v}),
    st.lists(numbers, min_size=1, max_size=5, unique=True).map(lambda v: {"NS": v}),
    st.lists(st.binary(max_size=10), min_size=1, max_size=5, unique=True).map(
        lambda v: {"BS": [base64.b64encode(b).decode() for b in v]}
    ),
)
attribute_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda v: {"L": v}),
        st.dictionaries(texts, children, max_size=4).map(lambda v: {"M": v}),
    ),
    max_leaves=20,
)
images = st.dictionaries(st.text(min_size=1, max_size=10), attribute_values, max_size=8)


# --- the same values through every way of reading them --------------------------------------

ACCESS_PATHS = ["[]", "get", "items", "values"]


def read_through(value: Any, path: str) -> Any:
    """A decoded value as plain Python, every image in it (nested ones too) read by `path`."""
    if isinstance(value, Image):
        names = list(value)  # iteration
        if path == "[]":
            return {name: read_through(value[name], path) for name in names}
        if path == "get":
            return {name: read_through(value.get(name), path) for name in names}
        if path == "items":
            return {name: read_through(inner, path) for name, inner in value.items()}
        return dict(
            zip(names, [read_through(inner, path) for inner in value.values()], strict=True)
        )
    if isinstance(value, list):
        return [read_through(inner, path) for inner in value]
    return value


def exact(value: Any) -> Any:
    """A value with its types spelled out, so that True is not 1 and 1.0 is not 1."""
    if isinstance(value, Decimal):
        return ("N", value.as_tuple())
    if isinstance(value, Mapping):
        return ("M", list(value.keys()), {name: exact(inner) for name, inner in value.items()})
    if isinstance(value, list):
        return ("L", [exact(inner) for inner in value])
    if isinstance(value, set):
        return ("set", frozenset(exact(member) for member in value))
    return (type(value).__name__, value)


EVERY_TYPE = {
    "s": {"S": "text"},
    "n": {"N": "-12.50"},
    "b": {"B": "aGVsbG8="},
    "ss": {"SS": ["a", "b"]},
    "ns": {"NS": ["1", "2.5", "1E+3"]},
    "bs": {"BS": ["AA==", "AQ=="]},
    "bool": {"BOOL": False},
    "null": {"NULL": True},
}
NESTED = {
    **EVERY_TYPE,
    "m": {"M": {**EVERY_TYPE, "m": {"M": {"l": {"L": [{"M": EVERY_TYPE}]}}}}},
    "l": {"L": [*EVERY_TYPE.values(), {"L": [{"M": EVERY_TYPE}]}]},
}


@settings(max_examples=400, deadline=None)
@given(attribute_values)
@example({"M": NESTED})
@example({"L": list(NESTED.values())})
def test_attribute_values_decode_exactly_as_boto3s_deserializer(value: dict[str, Any]) -> None:
    decoded = decode_attribute_value(value)
    expected = oracle(value)
    assert decoded == expected
    for path in ACCESS_PATHS:
        assert exact(read_through(decoded, path)) == exact(expected), path


@settings(max_examples=300, deadline=None)
@given(images)
@example(NESTED)
def test_an_image_reads_as_the_deserialized_item_every_way(raw: dict[str, Any]) -> None:
    expected = {name: oracle(value) for name, value in raw.items()}
    for path in ACCESS_PATHS:
        assert exact(read_through(Image(raw), path)) == exact(expected), path
    assert Image(raw) == expected
    assert expected == Image(raw)
    assert Image(raw) == Image(raw)
    assert list(Image(raw)) == list(raw)
    assert list(Image(raw).keys()) == list(raw)
    assert len(Image(raw)) == len(raw)
    assert all(name in Image(raw) for name in raw)


@settings(max_examples=200, deadline=None)
@given(images, st.data())
def test_an_image_read_in_part_then_whole_keeps_its_values_and_order(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    image = Image(raw)
    first = data.draw(st.lists(st.sampled_from(list(raw)), unique=True) if raw else st.just([]))
    read_first = {name: image[name] for name in first}
    expected = {name: oracle(value) for name, value in raw.items()}
    assert exact(read_through(image, "items")) == exact(expected)
    assert [name for name, _ in image.items()] == list(raw)
    assert all(image[name] is value for name, value in read_first.items())  # decoded once


@settings(max_examples=200, deadline=None)
@given(numbers)
def test_numbers_keep_their_exact_decimal_form(text: str) -> None:
    decoded = decode_attribute_value({"N": text})
    expected = oracle({"N": text})
    assert decoded == expected
    assert decoded.as_tuple() == expected.as_tuple()


def test_an_image_decodes_each_attribute_once_and_only_when_read() -> None:
    image = Image({"a": {"M": {"x": {"N": "1"}}}, "broken": {"N": "not a number"}})
    first = image["a"]
    assert image["a"] is first  # decoded once, then kept
    with pytest.raises(RecordDecodeError):
        image["broken"]  # only an attribute that is read can fail


def test_an_image_is_read_only() -> None:
    image = Image({"a": {"S": "x"}})
    with pytest.raises(TypeError):
        image["a"] = "y"  # type: ignore[index]
    assert not hasattr(image, "__setitem__")


def test_an_image_never_shows_its_content_in_its_repr() -> None:
    assert "secret" not in repr(Image({"name": {"S": "secret"}}))


@pytest.mark.parametrize(
    "value",
    [
        {"N": "not a number"},
        {"N": "123456789012345678901234567890123456789"},  # 39 digits: inexact
        {"N": "NaN"},
        {"N": 5},
        {"B": "%%% not base64"},
        {"S": 5},
        {"BOOL": "true"},
        {"NULL": False},
        {"SS": "a"},
        {"NS": ["x"]},
        {"BS": ["!!"]},
        {"B": "ünïcode"},  # base64 is ASCII
        {"BS": ["AAAA", "ü"]},
        {"SS": ["a", 1]},
        {"NS": ["1", 2]},  # numbers travel as strings
        {"NS": ["1", "Infinity"]},
        {"L": [{"S": "fine"}, {"X": "unknown type"}]},
        {"S": None},
        {"BOOL": None},
        {"M": []},
        {"L": {}},
        {"X": "unknown type"},
        {"S": "a", "N": "1"},
        "S",
        {},
    ],
)
def test_malformed_attribute_values_are_decode_errors(value: Any) -> None:
    # Every way of reading reaches the value, at the top and nested in maps and lists.
    nested = {"m": {"M": {"x": value}}, "l": {"L": [{"M": {"x": value}}]}}
    reads: list[Callable[[], Any]] = [
        lambda: decode_attribute_value(value),
        lambda: decode_attribute_value({"L": [{"S": "fine"}, value]}),
        lambda: Image({"a": value})["a"],
        lambda: Image({"a": value}).get("a"),
        lambda: list(Image({"a": {"S": "fine"}, "b": value}).values()),
        lambda: list(Image({"a": {"S": "fine"}, "b": value}).items()),
        lambda: Image({"a": {"S": "fine"}, "b": value}) == {"a": "fine", "b": None},
        lambda: Image(nested)["m"]["x"],
        lambda: Image(nested)["l"][0].get("x"),
        lambda: list(Image(nested)["m"].values()),
    ]
    for read in reads:
        with pytest.raises(RecordDecodeError):
            read()


# --- DynamoDB views over real events ------------------------------------------------------------

DYNAMODB_EVENTS = ["dynamodb-sam-generated.json", "powertools-dynamoStreamEvent.json"]
KINESIS_EVENTS = [
    "kinesis-sam-generated.json",
    "powertools-kinesisStreamEvent.json",
    "powertools-kinesisStreamEventOneRecord.json",
]


def _records(name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = load(name)["Records"]
    return records


@pytest.mark.parametrize(
    "raw",
    [r for name in DYNAMODB_EVENTS for r in _records(name)],
    ids=lambda r: f"{r['eventName']}-{r['dynamodb']['SequenceNumber']}",
)
def test_dynamodb_view_fields_match_the_raw_record(raw: dict[str, Any]) -> None:
    record = DynamoDBRecord(raw)
    data = raw["dynamodb"]
    assert record.raw is raw
    assert record.event_name == raw["eventName"]
    assert record.event_id == raw["eventID"]
    assert record.event_source_arn == raw["eventSourceARN"]
    assert record.sequence_number == data["SequenceNumber"]
    assert record.size_bytes == data["SizeBytes"]
    assert record.shard_id is None
    assert record.is_ttl_delete is False
    assert dict(record.keys) == {k: oracle(v) for k, v in data["Keys"].items()}
    for field, attribute in (("NewImage", "new_image"), ("OldImage", "old_image")):
        image = getattr(record, attribute)
        if field in data:
            assert dict(image) == {k: oracle(v) for k, v in data[field].items()}
        else:
            assert image is None
    created = data.get("ApproximateCreationDateTime")
    if created is None:
        assert record.approximate_creation_time is None
    else:
        assert record.approximate_creation_time == datetime.fromtimestamp(created, tz=UTC)
        assert record.approximate_creation_time.tzinfo is not None


def test_a_ttl_deletion_is_recognised_by_its_user_identity() -> None:
    raw = copy.deepcopy(_records("dynamodb-sam-generated.json")[2])
    raw["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert DynamoDBRecord(raw).is_ttl_delete is True


@pytest.mark.parametrize(
    "raw",
    [r for name in KINESIS_EVENTS for r in _records(name)],
    ids=lambda r: r["eventID"][-12:],
)
def test_kinesis_view_fields_match_the_raw_record(raw: dict[str, Any]) -> None:
    record = KinesisRecord(raw)
    data = raw["kinesis"]
    assert record.raw is raw
    assert record.data == base64.b64decode(data["data"])
    assert record.partition_key == data["partitionKey"]
    assert record.sequence_number == data["sequenceNumber"]
    assert record.shard_id == raw["eventID"].split(":")[0]
    assert record.event_source_arn == raw["eventSourceARN"]
    assert record.approximate_arrival_time == datetime.fromtimestamp(
        data["approximateArrivalTimestamp"], tz=UTC
    )


def test_kinesis_json_parses_the_data_with_decimal_numbers() -> None:
    record = KinesisRecord(_records("powertools-kinesisStreamEventOneRecord.json")[0])
    assert record.json() == {"message": "test message", "username": "test"}
    raw = copy.deepcopy(record.raw)
    raw["kinesis"]["data"] = base64.b64encode(b'{"price": 1.10}').decode()
    assert KinesisRecord(raw).json() == {"price": Decimal("1.10")}


def test_kinesis_data_that_is_not_json_is_a_decode_error() -> None:
    raw = copy.deepcopy(_records("kinesis-sam-generated.json")[0])
    with pytest.raises(RecordDecodeError):
        KinesisRecord(raw).json()
    raw["kinesis"]["data"] = "%%%"
    with pytest.raises(RecordDecodeError):
        _ = KinesisRecord(raw).data


# --- the envelope -----------------------------------------------------------------------------


def test_parse_records_gives_a_view_per_record_in_order() -> None:
    views = parse_records(load("dynamodb-sam-generated.json"))
    assert [v.sequence_number for v in views] == [
        r["dynamodb"]["SequenceNumber"] for r in _records("dynamodb-sam-generated.json")
    ]
    assert all(isinstance(v, DynamoDBRecord) for v in views)
    kinesis = parse_records(load("powertools-kinesisStreamEvent.json"))
    assert all(isinstance(v, KinesisRecord) for v in kinesis)


def test_an_empty_records_list_is_an_empty_batch() -> None:
    assert parse_records({"Records": []}) == []


def _with(record_change: Any) -> dict[str, Any]:
    event = copy.deepcopy(load("dynamodb-sam-generated.json"))
    record_change(event["Records"][1])
    return event


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ([], "JSON object"),
        ("Records", "JSON object"),
        ({}, "no Records"),
        ({"Records": {}}, "no Records"),
        ({"Records": ["x"]}, "not a JSON object"),
        (_with(lambda r: r.pop("eventSource")), "no eventSource"),
        (_with(lambda r: r.update(eventSource="aws:sqs")), "aws:sqs"),
        (_with(lambda r: r["dynamodb"].pop("SequenceNumber")), "no sequence number"),
        (_with(lambda r: r.pop("dynamodb")), "no sequence number"),
        (_with(lambda r: r.update(eventSourceARN="arn:other")), "more than one eventSourceARN"),
        ({"Records": [], "window": {"start": "x", "end": "y"}, "state": {}}, "tumbling-window"),
    ],
)
def test_bad_envelopes_raise_a_clear_error(event: Any, message: str) -> None:
    with pytest.raises(EventError, match=message):
        parse_records(event)


def test_the_powertools_sample_mixes_source_arns_which_lambda_never_does() -> None:
    # Its two records carry different eventSourceARNs: as one event that is an envelope error;
    # each record on its own is a valid event (see test_batch for them being processed).
    with pytest.raises(EventError, match="more than one eventSourceARN"):
        parse_records(load("powertools-dynamoStreamEvent.json"))
