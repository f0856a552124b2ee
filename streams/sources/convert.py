"""GetRecords records → the records Lambda delivers to a function (docs/esm.md section 5).

boto3's low-level clients decode what the stream sends: timestamps become `datetime`, binary
attribute values and Kinesis data become `bytes`. Lambda's event carries them as JSON: epoch
seconds and base64 strings. These functions turn one boto3 record into exactly the Lambda
record, key for key, so a handler cannot tell whether AWS or the local mapping called it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from streams.arn import Arn

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams.type_defs import RecordTypeDef as DynamoDBStreamsRecord
    from mypy_boto3_kinesis.type_defs import RecordTypeDef as KinesisRecord

__all__ = [
    "attribute_value_to_lambda",
    "dynamodb_record_to_lambda",
    "kinesis_record_to_lambda",
]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def attribute_value_to_lambda(value: Mapping[str, Any]) -> dict[str, Any]:
    """One DynamoDB attribute value as boto3's low-level client gives it → as Lambda sends it.

    Only binary differs: `B` and `BS` members are `bytes` in boto3 and base64 strings in the
    event; maps and lists are converted member by member. Numbers stay strings.
    """
    converted: dict[str, Any] = {}
    for tag, member in value.items():
        if tag == "B":
            converted[tag] = _b64(member)
        elif tag == "BS":
            converted[tag] = [_b64(item) for item in member]
        elif tag == "M":
            converted[tag] = _image(member)
        elif tag == "L":
            converted[tag] = [attribute_value_to_lambda(item) for item in member]
        else:
            converted[tag] = member
    return converted


def _image(image: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {name: attribute_value_to_lambda(value) for name, value in image.items()}


def _epoch_seconds(value: datetime) -> int:
    # DynamoDB Streams rounds ApproximateCreationDateTime down to the second, and Lambda sends
    # it as a whole number of epoch seconds.
    return int(value.timestamp())


def dynamodb_record_to_lambda(record: DynamoDBStreamsRecord, *, stream_arn: str) -> dict[str, Any]:
    """A DynamoDB Streams `GetRecords` record → the record of a Lambda DynamoDB event.

    `eventVersion` is "1.1" as Lambda sends it (GetRecords may say "1.0"); `awsRegion` and
    `eventSourceARN` come from the stream ARN. A TTL deletion keeps its `userIdentity`, with
    the lower-case keys of the event (`type`, `principalId`).
    """
    stream = record["dynamodb"]
    dynamodb: dict[str, Any] = {}
    if "ApproximateCreationDateTime" in stream:
        dynamodb["ApproximateCreationDateTime"] = _epoch_seconds(
            stream["ApproximateCreationDateTime"]
        )
    dynamodb["Keys"] = _image(stream["Keys"])
    if "NewImage" in stream:
        dynamodb["NewImage"] = _image(stream["NewImage"])
    if "OldImage" in stream:
        dynamodb["OldImage"] = _image(stream["OldImage"])
    dynamodb["SequenceNumber"] = stream["SequenceNumber"]
    dynamodb["SizeBytes"] = stream["SizeBytes"]
    dynamodb["StreamViewType"] = stream["StreamViewType"]
    converted: dict[str, Any] = {
        "eventID": record["eventID"],
        "eventName": record["eventName"],
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": Arn.parse(stream_arn).region,
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }
    identity = record.get("userIdentity")
    if identity is not None:
        converted["userIdentity"] = {
            "type": identity["Type"],
            "principalId": identity["PrincipalId"],
        }
    return converted


def _epoch_millis_seconds(value: datetime) -> float:
    # Kinesis arrival times have millisecond precision; Lambda sends epoch seconds as a float.
    return round(value.timestamp(), 3)


def kinesis_record_to_lambda(
    record: KinesisRecord, *, shard_id: str, stream_arn: str, invoke_identity_arn: str
) -> dict[str, Any]:
    """A Kinesis `GetRecords` record → the record of a Lambda Kinesis event.

    `eventID` is `<shardId>:<sequenceNumber>`; `invokeIdentityArn` is the role Lambda would
    invoke with (the caller chooses it: locally there is no execution role).
    """
    sequence_number = record["SequenceNumber"]
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record["PartitionKey"],
            "sequenceNumber": sequence_number,
            "data": _b64(record["Data"]),
            "approximateArrivalTimestamp": _epoch_millis_seconds(
                record["ApproximateArrivalTimestamp"]
            ),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{sequence_number}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": invoke_identity_arn,
        "awsRegion": Arn.parse(stream_arn).region,
        "eventSourceARN": stream_arn,
    }
