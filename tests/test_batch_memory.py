"""What a batch keeps in memory: decoded images go with their record."""

from __future__ import annotations

import gc
import io
from typing import Any

from aws_lambda_powertools import Logger

from streams import StreamProcessor
from streams.records import parse_records
from tests.factories import MemorySink, dynamodb_event, kinesis_record


def make(handler: Any) -> StreamProcessor:
    return StreamProcessor(
        handler, dead_letters=MemorySink(), logger=Logger(service="test", stream=io.StringIO())
    )


def test_a_handled_records_decoded_images_are_let_go_before_the_batch_ends() -> None:
    # A 6 MB event decoded in full is many times that in objects: the batch must not keep
    # every record's images until it ends.
    previous: list[Any] = []  # the images of the record handled before
    held_by_others: list[list[Any]] = []

    def handle(record: Any) -> None:
        held_by_others.extend(
            [referrer for referrer in gc.get_referrers(image) if referrer is not previous]
            for image in previous
        )
        previous[:] = [record.new_image, record.keys]

    make(handle).process(dynamodb_event(5))

    assert held_by_others == [[]] * 8


def test_a_records_images_read_after_it_is_done_decode_again_to_the_same_values() -> None:
    records = parse_records(dynamodb_event(3))
    during: list[dict[str, Any]] = []

    def handle(record: Any) -> None:
        image = record.new_image
        assert record.new_image is image  # kept while the record is handled
        during.append(dict(image))

    result = make(handle).run(records)

    assert result.done == 3
    assert [dict(record.new_image) for record in records] == during


def test_a_kinesis_records_data_reads_the_same_after_it_is_done() -> None:
    records = parse_records({"Records": [kinesis_record(1, b'{"n": 7}')]})
    make(lambda record: record.json()).run(records)
    assert records[0].json() == {"n": 7}  # type: ignore[union-attr]
