"""Record rules the other record tests leave open (found by `make mutation`): what a malformed
value's error says, what a record shows of itself in logs and reprs, the creation-time units."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from streams import DynamoDBRecord, KinesisRecord, RecordDecodeError, StreamProcessor
from streams.errors import EventError
from streams.records import DynamoDBChange, decode_attribute_value, parse_records
from tests.factories import MemorySink, dynamodb_record, kinesis_record


@pytest.mark.parametrize(
    ("attribute_value", "message"),
    [
        ({"S": 1}, "string attribute must be a string, got int"),
        ({"SS": ["a", 1]}, "string attribute must be a string, got int"),
        ({"SS": "a"}, "SS attribute must be an array, got str"),
        ({"N": 1}, "number attribute must be a string, got int"),
        ({"NS": ["1", 2]}, "number attribute must be a string, got int"),
        ({"NS": "1"}, "NS attribute must be an array, got str"),
        ({"N": "NaN"}, "invalid number 'NaN'"),
        ({"B": 1}, "binary attribute must be a base64 string, got int"),
        ({"BS": ["AA==", 1]}, "binary attribute must be a base64 string, got int"),
        ({"BS": "AA=="}, "BS attribute must be an array, got str"),
        ({"BOOL": "true"}, "BOOL attribute must be true or false, got 'true'"),
        ({"NULL": False}, "NULL attribute must be true, got False"),
        ({"L": {"S": "a"}}, "L attribute must be an array, got dict"),
        ({"L": [{"N": 1}]}, "number attribute must be a string, got int"),
        ({"M": ["a"]}, "M attribute must be an object, got list"),
        ({"X": "a"}, "unknown attribute type 'X'"),
        ({"X": ["AAAA"]}, "unknown attribute type 'X'"),
        ({"B": True}, "binary attribute must be a base64 string, got bool"),
        ({"BS": "AAAA"}, "BS attribute must be an array, got str"),
        (
            {"S": "a", "N": "1"},
            "an attribute value is an object with exactly one type key, got {'S': 'a', 'N': '1'}",
        ),
        ("a", "an attribute value is an object with exactly one type key, got 'a'"),
    ],
)
def test_a_malformed_attribute_value_is_refused_naming_its_type_and_what_it_got(
    attribute_value: object, message: str
) -> None:
    with pytest.raises(RecordDecodeError) as raised:
        decode_attribute_value(attribute_value)

    assert str(raised.value) == message


def test_an_inexact_number_is_refused_quoting_at_most_50_of_its_characters() -> None:
    digits = "1" * 60  # 60 significant digits: more than DynamoDB's 38

    with pytest.raises(RecordDecodeError) as raised:
        decode_attribute_value({"N": digits})

    assert str(raised.value).startswith(f"invalid number '{'1' * 50}': ")


def test_a_long_invalid_number_is_quoted_to_50_characters() -> None:
    with pytest.raises(RecordDecodeError) as raised:
        decode_attribute_value({"N": "Infinity" + " " * 60})

    assert str(raised.value) == f"invalid number {('Infinity' + ' ' * 60)[:50]!r}"


@pytest.mark.parametrize(
    ("field", "change", "message"),
    [
        ("keys", {"NewImage": {}}, "record has no dynamodb.Keys"),
        ("keys", {"Keys": "k"}, "dynamodb.Keys is not an object"),
        ("new_image", {"NewImage": []}, "dynamodb.NewImage is not an object"),
        ("old_image", {"OldImage": 1}, "dynamodb.OldImage is not an object"),
    ],
)
def test_a_missing_or_malformed_image_is_refused_naming_the_field(
    field: str, change: dict[str, Any], message: str
) -> None:
    raw = dynamodb_record(1)
    raw["dynamodb"] = {"SequenceNumber": "1", **change}
    (record,) = parse_records({"Records": [raw]})

    with pytest.raises(RecordDecodeError) as raised:
        getattr(record, field)

    assert str(raised.value) == message


def change_created_at(value: object) -> DynamoDBChange:
    return DynamoDBChange(
        {"eventSource": "aws:dynamodb", "dynamodb": {"ApproximateCreationDateTime": value}}
    )


def test_creation_times_on_kinesis_are_milliseconds_below_10_to_the_13_and_microseconds_above() -> (
    None
):
    last_millisecond = change_created_at(10**13 - 1).approximate_creation_time
    first_microsecond = change_created_at(10**13).approximate_creation_time

    assert last_millisecond == datetime(2286, 11, 20, 17, 46, 39, 999000, tzinfo=UTC)
    assert first_microsecond == datetime(1970, 4, 26, 17, 46, 40, tzinfo=UTC)


@pytest.mark.parametrize(("value", "kind"), [(1.5e12, "float"), ("1700000000000", "str")])
def test_a_creation_time_on_kinesis_that_is_not_whole_units_is_refused(
    value: object, kind: str
) -> None:
    with pytest.raises(RecordDecodeError) as raised:
        change_created_at(value).approximate_creation_time  # noqa: B018

    assert str(raised.value) == (
        f"ApproximateCreationDateTime must be whole epoch milli- or microseconds, got {kind}"
    )


def test_a_kinesis_records_log_fields_are_its_ids_position_and_partition_key() -> None:
    raw = kinesis_record(7, b"secret data", shard="shardId-000000000003")
    raw["kinesis"]["partitionKey"] = "child-7"

    (record,) = parse_records({"Records": [raw]})

    assert isinstance(record, KinesisRecord)
    assert record.log_fields() == {
        "eventID": raw["eventID"],
        "shardId": "shardId-000000000003",
        "sequenceNumber": raw["kinesis"]["sequenceNumber"],
        "subSequenceNumber": None,
        "partitionKey": "child-7",
    }


def test_reprs_show_the_event_and_position_never_the_item() -> None:
    raw = dynamodb_record(5, event_name="INSERT")
    (record,) = parse_records({"Records": [raw]})
    document = {**raw, "tableName": "Children"}
    change = DynamoDBChange(document)

    assert isinstance(record, DynamoDBRecord)
    assert repr(record) == "<DynamoDBRecord INSERT seq=5>"
    assert repr(change) == "<DynamoDBChange INSERT table=Children>"


def test_a_record_from_another_service_is_an_envelope_error_naming_the_supported_ones() -> None:
    with pytest.raises(EventError) as raised:
        parse_records({"Records": [{"eventSource": "aws:sqs"}]})

    assert str(raised.value) == (
        "record 0 comes from 'aws:sqs'; StreamProcessor handles aws:dynamodb and aws:kinesis"
    )


def test_a_kinesis_record_kept_past_its_batch_still_reads_its_dynamodb_change() -> None:
    change = dynamodb_record(1, event_name="INSERT")
    kept: list[KinesisRecord] = []

    def handler(record: KinesisRecord) -> None:
        assert record.dynamodb.event_name == "INSERT"
        kept.append(record)

    processor = StreamProcessor(
        handler,
        dead_letters=MemorySink(),
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )
    response = processor.process({"Records": [kinesis_record(1, json.dumps(change).encode())]})

    assert response == {"batchItemFailures": []}
    (record,) = kept
    assert record.dynamodb.event_name == "INSERT"
    assert record.dynamodb.keys == {"childId": "c-1"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"eventSource": "aws:kinesis", "dynamodb": {}},
            "record data is not a DynamoDB change (eventSource)",
        ),
        (["not", "an", "object"], "record data is not a DynamoDB change (eventSource)"),
        ({"eventSource": "aws:dynamodb", "dynamodb": []}, "record data has no dynamodb object"),
    ],
)
def test_kinesis_data_that_is_not_a_dynamodb_change_is_refused_saying_why(
    document: object, message: str
) -> None:
    (record,) = parse_records({"Records": [kinesis_record(1, json.dumps(document).encode())]})

    with pytest.raises(RecordDecodeError) as raised:
        record.dynamodb  # type: ignore[union-attr]  # noqa: B018

    assert str(raised.value) == message


@pytest.mark.parametrize("kinesis", ["not an object", {"sequenceNumber": ""}, {}])
def test_a_kinesis_record_without_a_sequence_number_is_refused(kinesis: object) -> None:
    with pytest.raises(RecordDecodeError) as raised:
        KinesisRecord({"kinesis": kinesis})

    assert str(raised.value) == "record has no kinesis.sequenceNumber"


def test_kinesis_data_that_is_not_json_or_base64_is_refused_saying_so() -> None:
    not_json = kinesis_record(1, b"{not json")
    not_base64 = kinesis_record(2)
    not_base64["kinesis"]["data"] = "***"
    (first, second) = parse_records({"Records": [not_json, not_base64]})

    with pytest.raises(RecordDecodeError) as raised:
        first.json()  # type: ignore[union-attr]
    assert str(raised.value).startswith("record data is not JSON: ")
    with pytest.raises(RecordDecodeError) as raised:
        second.data  # type: ignore[union-attr]  # noqa: B018
    assert str(raised.value).startswith("invalid base64 in binary attribute: ")


def test_a_dynamodb_records_log_fields_are_its_ids_and_keys_or_none_when_unreadable() -> None:
    raw = dynamodb_record(3)
    broken = dynamodb_record(4)
    broken["dynamodb"]["Keys"] = {"childId": {"N": "not a number"}}

    record, unreadable = parse_records({"Records": [raw, broken]})

    assert record.log_fields() == {
        "eventID": raw["eventID"],
        "shardId": None,
        "sequenceNumber": "3",
        "keys": {"childId": "c-1"},
    }
    assert unreadable.log_fields()["keys"] is None


@pytest.mark.parametrize("dynamodb", ["not an object", {"SequenceNumber": ""}, {}])
def test_a_dynamodb_record_without_a_sequence_number_is_refused(dynamodb: object) -> None:
    with pytest.raises(RecordDecodeError) as raised:
        DynamoDBRecord({"dynamodb": dynamodb})

    assert str(raised.value) == "record has no dynamodb.SequenceNumber"


def test_an_arrival_time_that_is_not_epoch_seconds_is_refused_saying_what_it_got() -> None:
    raw = kinesis_record(1)
    raw["kinesis"]["approximateArrivalTimestamp"] = "yesterday"
    (record,) = parse_records({"Records": [raw]})

    with pytest.raises(RecordDecodeError) as raised:
        record.record_time  # noqa: B018

    assert str(raised.value) == "approximateArrivalTimestamp must be epoch seconds, got 'yesterday'"


def _envelope(event: object) -> str:
    with pytest.raises(EventError) as raised:
        parse_records(event)
    return str(raised.value)


def test_an_event_lambda_could_not_have_sent_is_refused_saying_what_is_wrong() -> None:
    first, second = dynamodb_record(1), dynamodb_record(2)
    other_table = {**second, "eventSourceARN": "arn:aws:dynamodb:us-east-1:1:table/Other/stream/x"}

    assert _envelope(["a list"]) == "a stream event is a JSON object, got list"
    assert _envelope({"Records": "no"}) == "not a stream event: it has no Records list"
    assert _envelope({"Records": [], "isFinalInvokeForWindow": False}) == (
        "tumbling-window events are not supported by StreamProcessor yet "
        "(remove TumblingWindowInSeconds or handle the window yourself)"
    )
    assert _envelope({"Records": [first, {**second, "eventSource": "aws:kinesis"}]}) == (
        "record 1 comes from 'aws:kinesis'"
    )
    assert _envelope({"Records": [first, other_table]}) == (
        f"records come from more than one eventSourceARN ({first['eventSourceARN']!r} and "
        f"{other_table['eventSourceARN']!r}); Lambda never mixes sources or shards"
    )
    assert _envelope({"Records": [first, {**second, "dynamodb": {}}]}) == (
        "record 1 has no sequence number"
    )


@pytest.mark.parametrize("read", ["by name", "whole"])
@pytest.mark.parametrize(
    "attribute",
    [{"B": "AA=!="}, {"B": "A"}, "a", ["a"]],
    ids=["base64 with a stray character", "base64 cut short", "a one-letter string", "a list"],
)
def test_an_image_attribute_that_is_not_valid_dynamodb_json_is_poison_however_it_is_read(
    read: str, attribute: object
) -> None:
    from streams.records import Image

    image = Image({"id": {"S": "c-1"}, "value": attribute})

    with pytest.raises(RecordDecodeError):
        if read == "by name":
            image["value"]
        else:
            dict(image.items())


def test_a_binary_set_of_digits_decodes_as_binary_not_numbers() -> None:
    assert decode_attribute_value({"BS": ["1234"]}) == {b"\xd7m\xf8"}


@pytest.mark.parametrize(
    "attribute_value",
    [{"BS": ["AA==", "AA=!="]}, {"L": [{"M": {}, "S": "x"}]}],
    ids=["a set member with a stray character", "a list member with two type keys"],
)
def test_a_malformed_member_of_a_set_or_list_is_refused(attribute_value: object) -> None:
    with pytest.raises(RecordDecodeError):
        decode_attribute_value(attribute_value)
