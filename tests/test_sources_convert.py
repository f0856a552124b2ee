"""GetRecords records become exactly the records Lambda delivers (docs/esm.md section 5).

Two oracles: records that real AWS delivered to a function (recorded in LocalStack's
snapshots, `/work/shared/fixtures/aws-recorded/`, and `sam local generate-event`'s events), and
botocore's own parser: a record in the wire JSON that the stream sends, parsed as boto3 parses
it, must convert back to that wire JSON (binary as base64, times as epoch seconds).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.parsers
import botocore.session
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.sources import (
    DynamoDBStreamSource,
    KinesisStreamSource,
    Position,
    dynamodb_record_to_lambda,
    kinesis_record_to_lambda,
)

EVENTS = Path(__file__).parent / "events"

# Records as AWS delivered them to a function, from LocalStack's AWS-validated snapshots
# (tests/aws/services/lambda_/event_source_mapping/, commit 8b9a79f): `<...>` are LocalStack's
# placeholders for values that change per run.
RECORDED_DYNAMODB_INSERT_NEW_IMAGE: dict[str, Any] = {
    "eventID": "<event-i-d:1>",
    "eventName": "INSERT",
    "eventVersion": "1.1",
    "eventSource": "aws:dynamodb",
    "awsRegion": "<region>",
    "dynamodb": {
        "ApproximateCreationDateTime": "<approximate-creation-datetime>",
        "Keys": {"my_partition_key": {"S": "hello world"}},
        "NewImage": {
            "binary_key": {"B": "Zm9vYmFy"},
            "my_partition_key": {"S": "hello world"},
        },
        "SequenceNumber": "<sequence-number:1>",
        "SizeBytes": 70,
        "StreamViewType": "NEW_IMAGE",
    },
    "eventSourceARN": (
        "arn:<partition>:dynamodb:<region>:111111111111:table/<resource:1>/stream/<resource:2>"
    ),
}
RECORDED_DYNAMODB_MODIFY: dict[str, Any] = {
    "eventID": "<event-i-d:2>",
    "eventName": "MODIFY",
    "eventVersion": "1.1",
    "eventSource": "aws:dynamodb",
    "awsRegion": "<region>",
    "dynamodb": {
        "ApproximateCreationDateTime": "<approximate-creation-datetime>",
        "Keys": {"id": {"S": "id_value"}},
        "NewImage": {"id2": {"S": "id2_new_value"}, "id": {"S": "id_value"}},
        "OldImage": {"id": {"S": "id_value"}},
        "SequenceNumber": "<sequence-number:2>",
        "SizeBytes": 46,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    },
    "eventSourceARN": (
        "arn:<partition>:dynamodb:<region>:111111111111:table/<resource:1>/stream/<resource:2>"
    ),
}
RECORDED_KINESIS: dict[str, Any] = {
    "kinesis": {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": "test_0",
        "sequenceNumber": "<sequence-number:1>",
        "data": "aGVsbG8=",
        "approximateArrivalTimestamp": "<approximate-arrival-timestamp>",
    },
    "eventSource": "aws:kinesis",
    "eventVersion": "1.0",
    "eventID": "shardId-000000000000:<sequence-number:1>",
    "eventName": "aws:kinesis:record",
    "invokeIdentityArn": "arn:<partition>:iam::111111111111:role/<resource:3>",
    "awsRegion": "<region>",
    "eventSourceARN": "arn:<partition>:kinesis:<region>:111111111111:stream/<resource:1>",
}


def _sam_event(name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((EVENTS / name).read_text())["Records"]
    return records


def _assert_same_shape(ours: Any, theirs: Any, where: str = "record") -> None:
    """Same keys, and the same JSON type wherever AWS's value is concrete."""
    if isinstance(theirs, str) and theirs.startswith("<") and theirs.endswith(">"):
        return  # a LocalStack placeholder: the type is checked against another event
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), where
        assert set(ours) == set(theirs), where
        for key in theirs:
            _assert_same_shape(ours[key], theirs[key], f"{where}.{key}")
    else:
        assert type(ours) is type(theirs), f"{where}: {type(ours)} is not {type(theirs)}"


def _create_table(aws: boto3.Session, name: str, key: str, view: str) -> str:
    description = aws.client("dynamodb").create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
    )
    return description["TableDescription"]["LatestStreamArn"]


def _read_all_dynamodb(stream_arn: str) -> list[dict[str, Any]]:
    source = DynamoDBStreamSource(stream_arn)
    (shard,) = source.list_shards()
    return source.open(shard.shard_id, Position("TRIM_HORIZON")).read(100).records


def test_dynamodb_insert_with_binary_matches_the_record_aws_delivered(
    aws: boto3.Session, unique_name: str
) -> None:
    # GIVEN the item AWS's recorded test wrote, on a NEW_IMAGE stream
    stream_arn = _create_table(aws, unique_name, "my_partition_key", "NEW_IMAGE")
    aws.client("dynamodb").put_item(
        TableName=unique_name,
        Item={"my_partition_key": {"S": "hello world"}, "binary_key": {"B": b"foobar"}},
    )
    # WHEN it is read and converted
    (record,) = _read_all_dynamodb(stream_arn)
    # THEN it has AWS's keys, order and types, and the same images (binary as base64)
    _assert_same_shape(record, RECORDED_DYNAMODB_INSERT_NEW_IMAGE)
    assert (
        record["dynamodb"]["NewImage"] == RECORDED_DYNAMODB_INSERT_NEW_IMAGE["dynamodb"]["NewImage"]
    )
    assert record["dynamodb"]["Keys"] == RECORDED_DYNAMODB_INSERT_NEW_IMAGE["dynamodb"]["Keys"]
    assert record["eventSourceARN"] == stream_arn
    assert record["awsRegion"] == "us-east-1"
    assert len(record["eventID"]) == 32
    int(record["eventID"], 16)


def test_dynamodb_modify_and_remove_have_the_keys_and_types_aws_sends(
    aws: boto3.Session, unique_name: str
) -> None:
    stream_arn = _create_table(aws, unique_name, "id", "NEW_AND_OLD_IMAGES")
    client = aws.client("dynamodb")
    client.put_item(TableName=unique_name, Item={"id": {"S": "id_value"}})
    client.put_item(
        TableName=unique_name, Item={"id": {"S": "id_value"}, "id2": {"S": "id2_new_value"}}
    )
    client.delete_item(TableName=unique_name, Key={"id": {"S": "id_value"}})

    insert, modify, remove = _read_all_dynamodb(stream_arn)

    sam_insert, sam_modify, sam_remove = _sam_event("dynamodb-sam-generated.json")
    _assert_same_shape(modify, RECORDED_DYNAMODB_MODIFY)
    assert {key: modify["dynamodb"][key] for key in ("Keys", "NewImage", "OldImage")} == {
        key: RECORDED_DYNAMODB_MODIFY["dynamodb"][key] for key in ("Keys", "NewImage", "OldImage")
    }
    for ours, sams in ((insert, sam_insert), (modify, sam_modify), (remove, sam_remove)):
        # Same keys as the generated event, and epoch seconds as a number where AWS uses one.
        assert set(ours) == set(sams)
        assert set(ours["dynamodb"]) == set(sams["dynamodb"])
        assert isinstance(ours["dynamodb"]["ApproximateCreationDateTime"], int)
        assert isinstance(ours["dynamodb"]["SizeBytes"], int)
    assert [record["eventName"] for record in (insert, modify, remove)] == [
        "INSERT",
        "MODIFY",
        "REMOVE",
    ]


def test_kinesis_record_matches_the_record_aws_delivered(
    aws: boto3.Session, unique_name: str
) -> None:
    client = aws.client("kinesis")
    client.create_stream(StreamName=unique_name, ShardCount=1)
    stream_arn = client.describe_stream_summary(StreamName=unique_name)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    client.put_record(StreamARN=stream_arn, Data=b"hello", PartitionKey="test_0")

    source = KinesisStreamSource(stream_arn)
    (shard,) = source.list_shards()
    (record,) = source.open(shard.shard_id, Position("TRIM_HORIZON")).read(10).records

    _assert_same_shape(record, RECORDED_KINESIS)
    (sam,) = _sam_event("kinesis-sam-generated.json")
    _assert_same_shape(record["kinesis"], sam["kinesis"])  # approximateArrivalTimestamp: float
    assert record["kinesis"]["data"] == RECORDED_KINESIS["kinesis"]["data"]
    assert record["eventID"] == f"{shard.shard_id}:{record['kinesis']['sequenceNumber']}"
    assert record["eventSourceARN"] == stream_arn
    assert record["invokeIdentityArn"] == "arn:aws:iam::123456789012:role/streams-local-mapping"


# --- round trip through botocore's parser -------------------------------------------------

_SESSION = botocore.session.get_session()


def _parse(service: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """What boto3's client returns for this response body (botocore's own parser)."""
    model = _SESSION.get_service_model(service).operation_model(operation)
    parser = botocore.parsers.create_parser(model.metadata["protocol"])
    parsed: dict[str, Any] = parser.parse(
        {"body": json.dumps(body).encode(), "headers": {}, "status_code": 200},
        model.output_shape,
    )
    return parsed


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_numbers = st.one_of(
    st.integers(min_value=-(10**38) + 1, max_value=10**38 - 1).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=5).map(str),
)
_names = st.text(min_size=1, max_size=8)
_scalars = st.one_of(
    st.builds(lambda value: {"S": value}, st.text(max_size=20)),
    st.builds(lambda value: {"N": value}, _numbers),
    st.builds(lambda value: {"B": _b64(value)}, st.binary(max_size=20)),
    st.builds(lambda value: {"BOOL": value}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda values: {"SS": sorted(values)}, st.sets(st.text(), min_size=1, max_size=4)),
    st.builds(lambda values: {"NS": sorted(values)}, st.sets(_numbers, min_size=1, max_size=4)),
    st.builds(
        lambda values: {"BS": [_b64(value) for value in sorted(values)]},
        st.sets(st.binary(max_size=8), min_size=1, max_size=4),
    ),
)
attribute_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.builds(lambda members: {"M": members}, st.dictionaries(_names, inner, max_size=4)),
        st.builds(lambda members: {"L": members}, st.lists(inner, max_size=4)),
    ),
    max_leaves=12,
)
images = st.dictionaries(_names, attribute_values, min_size=1, max_size=5)
STREAM_ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/t/stream/2026-11-22T00:00:00.000"


@settings(max_examples=200, deadline=None)
@given(
    keys=images,
    new_image=st.none() | images,
    old_image=st.none() | images,
    created=st.integers(min_value=0, max_value=4_102_444_800),
    ttl_delete=st.booleans(),
)
def test_dynamodb_record_converts_back_to_the_wire_json_boto3_parsed(
    keys: dict[str, Any],
    new_image: dict[str, Any] | None,
    old_image: dict[str, Any] | None,
    created: int,
    ttl_delete: bool,
) -> None:
    # GIVEN a GetRecords record as DynamoDB Streams sends it (the Lambda event's encoding)
    stream: dict[str, Any] = {"ApproximateCreationDateTime": created, "Keys": keys}
    if new_image is not None:
        stream["NewImage"] = new_image
    if old_image is not None:
        stream["OldImage"] = old_image
    stream |= {"SequenceNumber": "100", "SizeBytes": 42, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    wire: dict[str, Any] = {
        "eventID": "0123456789abcdef0123456789abcdef",
        "eventName": "REMOVE" if ttl_delete else "MODIFY",
        "eventVersion": "1.0",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "dynamodb": stream,
    }
    if ttl_delete:
        wire["userIdentity"] = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    # WHEN boto3 parses it (bytes, datetime) and we convert it
    (parsed,) = _parse("dynamodbstreams", "GetRecords", {"Records": [wire]})["Records"]
    converted = dynamodb_record_to_lambda(parsed, stream_arn=STREAM_ARN)
    # THEN it is the wire record again, in Lambda's envelope
    expected = {key: wire[key] for key in ("eventID", "eventName")}
    expected |= {
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "dynamodb": stream,
        "eventSourceARN": STREAM_ARN,
    }
    if ttl_delete:
        expected["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert converted == expected
    assert json.loads(json.dumps(converted)) == converted  # plain JSON, nothing boto3-specific


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=64),
    partition_key=st.text(min_size=1, max_size=20),
    arrival_millis=st.integers(min_value=0, max_value=4_102_444_800_000),
)
def test_kinesis_record_converts_back_to_the_wire_json_boto3_parsed(
    data: bytes, partition_key: str, arrival_millis: int
) -> None:
    arrival = arrival_millis / 1000
    wire = {
        "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
        "ApproximateArrivalTimestamp": arrival,
        "Data": _b64(data),
        "PartitionKey": partition_key,
    }
    (parsed,) = _parse("kinesis", "GetRecords", {"Records": [wire], "MillisBehindLatest": 0})[
        "Records"
    ]
    converted = kinesis_record_to_lambda(
        parsed,
        shard_id="shardId-000000000006",
        stream_arn="arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream",
        invoke_identity_arn="arn:aws:iam::123456789012:role/lambda-role",
    )
    assert converted["kinesis"] == {
        "kinesisSchemaVersion": "1.0",
        "partitionKey": partition_key,
        "sequenceNumber": wire["SequenceNumber"],
        "data": wire["Data"],
        "approximateArrivalTimestamp": arrival,
    }
    assert converted["eventID"] == f"shardId-000000000006:{wire['SequenceNumber']}"
    assert converted["awsRegion"] == "us-east-2"


def test_kinesis_conversion_reproduces_the_powertools_sample_event() -> None:
    # The sample is a real event: each record, read back as GetRecords gives it, converts to
    # exactly itself.
    for record in _sam_event("powertools-kinesisStreamEvent.json"):
        kinesis = record["kinesis"]
        as_boto3 = {
            "SequenceNumber": kinesis["sequenceNumber"],
            "ApproximateArrivalTimestamp": datetime.fromtimestamp(
                kinesis["approximateArrivalTimestamp"], UTC
            ),
            "Data": base64.b64decode(kinesis["data"]),
            "PartitionKey": kinesis["partitionKey"],
        }
        shard_id = record["eventID"].split(":")[0]
        converted = kinesis_record_to_lambda(
            as_boto3,
            shard_id=shard_id,
            stream_arn=record["eventSourceARN"],
            invoke_identity_arn=record["invokeIdentityArn"],
        )
        assert json.dumps(converted) == json.dumps(record)
