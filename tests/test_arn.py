"""ARNs are read in one place, and every part of the project reads them the same way."""

from __future__ import annotations

import pytest

from streams.arn import Arn

STREAM = "arn:aws:dynamodb:eu-west-1:123456789012:table/naughty-nice/stream/2026-11-21T00:00:00.000"


def test_an_arn_splits_into_its_six_fields_and_the_resource_keeps_its_colons() -> None:
    arn = Arn.parse("arn:aws:lambda:us-east-1:123456789012:function:processor:live")
    assert (arn.partition, arn.service, arn.region, arn.account) == (
        "aws",
        "lambda",
        "us-east-1",
        "123456789012",
    )
    assert arn.resource == "function:processor:live"
    assert arn.name == "processor"
    assert str(arn) == "arn:aws:lambda:us-east-1:123456789012:function:processor:live"


@pytest.mark.parametrize(
    ("text", "name", "stream_source", "is_queue"),
    [
        (STREAM, "naughty-nice", "aws:dynamodb", False),
        ("arn:aws:kinesis:us-east-1:123456789012:stream/orders", "orders", "aws:kinesis", False),
        ("arn:aws:sqs:us-east-1:123456789012:dead-letters.fifo", "dead-letters.fifo", None, True),
        ("arn:aws:sns:us-east-1:123456789012:alarms", "alarms", None, False),
        ("arn:aws:s3:::overflow-bucket", "overflow-bucket", None, False),
        ("arn:aws:dynamodb:us-east-1:123456789012:table/naughty-nice", "naughty-nice", None, False),
    ],
)
def test_each_service_names_its_resource_its_own_way(
    text: str, name: str, stream_source: str | None, is_queue: bool
) -> None:
    arn = Arn.parse(text)
    assert (arn.name, arn.stream_source, arn.is_queue) == (name, stream_source, is_queue)


@pytest.mark.parametrize(
    "text", ["", "naughty-nice", "arn:aws:sqs:us-east-1:queue", "urn:a:b:c:d:e"]
)
def test_text_that_is_not_an_arn_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an ARN"):
        Arn.parse(text)
    assert Arn.of(text) is None
