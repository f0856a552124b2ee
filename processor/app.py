"""The deployable function: wiring only. Its business logic is `processor.naughty_nice`."""

from __future__ import annotations

import os
from typing import Any

from processor.naughty_nice import DeliveryProjection
from streams import StreamProcessor

_table = os.environ.get("DELIVERY_TABLE_NAME")
if not _table:
    raise RuntimeError("DELIVERY_TABLE_NAME is not set: the function needs its delivery table")

# Created once per warm process: the boto3 clients and halt_after's counter live across invocations.
# Its age limit comes from STREAMS_MAX_RECORD_AGE_SECONDS (template.yaml), kept below the
# mapping's MaximumRecordAgeInSeconds so that a record that keeps failing is parked in full
# before Lambda drops it with metadata only.
processor = StreamProcessor(DeliveryProjection(_table))


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return processor.process(event, context)
