"""The deployable function: wiring only. Its business logic is `processor.naughty_nice`."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from processor.naughty_nice import DeliveryProjection
from streams import StreamProcessor

_table = os.environ.get("DELIVERY_TABLE_NAME")
if not _table:
    raise RuntimeError("DELIVERY_TABLE_NAME is not set: the function needs its delivery table")
# Records of different children at once (template.yaml's Concurrency): the projection's one
# boto3 client is thread-safe, and gets a connection for each.
_concurrency = int(os.environ.get("STREAMS_CONCURRENCY", "1"))

# Created once per warm process: the boto3 clients and halt_after's counter live across invocations.
# Its age limit comes from STREAMS_MAX_RECORD_AGE_SECONDS (template.yaml), kept below the
# mapping's MaximumRecordAgeInSeconds so that a record that keeps failing is parked in full
# before Lambda drops it with metadata only.
handle = DeliveryProjection(
    _table,
    client=boto3.client("dynamodb", config=Config(max_pool_connections=max(10, _concurrency))),
)
processor = StreamProcessor(handle, concurrency=_concurrency)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return processor.process(event, context)
