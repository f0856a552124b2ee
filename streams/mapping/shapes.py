"""What the mapping reads from a Lambda-shaped stream record (docs/esm.md section 5).

Records reach the mapping already in the exact shape Lambda delivers; these accessors name the
few fields the rules need, per event source: the sequence number (order, checkpoints, partial
batch responses), the arrival time (record age, iterator age, tumbling windows) and the key that
keeps order when a shard is processed in parallel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from streams.sources.base import EventSource

BatchInfoKey = Literal["DDBStreamBatchInfo", "KinesisBatchInfo"]


@dataclass(frozen=True)
class RecordShape:
    """The fields of one event source's records that the mapping's rules read."""

    event_source: EventSource

    @property
    def batch_info_key(self) -> BatchInfoKey:
        """The on-failure record's key for the batch description (docs/esm.md section 4)."""
        return "DDBStreamBatchInfo" if self.event_source == "aws:dynamodb" else "KinesisBatchInfo"

    def sequence_number(self, record: Mapping[str, Any]) -> str:
        if self.event_source == "aws:dynamodb":
            return str(record["dynamodb"]["SequenceNumber"])
        return str(record["kinesis"]["sequenceNumber"])

    def arrival_time(self, record: Mapping[str, Any]) -> float:
        """Epoch seconds the stream gives the record: DynamoDB's creation time, Kinesis' arrival."""
        if self.event_source == "aws:dynamodb":
            return float(record["dynamodb"]["ApproximateCreationDateTime"])
        return float(record["kinesis"]["approximateArrivalTimestamp"])

    def order_key(self, record: Mapping[str, Any]) -> str:
        """The key whose records keep their order in parallel: item key, or partition key."""
        if self.event_source == "aws:dynamodb":
            return json.dumps(record["dynamodb"]["Keys"], sort_keys=True)
        return str(record["kinesis"]["partitionKey"])

    def arrival_text(self, epoch_seconds: float) -> str:
        """An arrival time as the on-failure record writes it.

        Recorded from AWS: DynamoDB in whole seconds (`2022-07-13T13:48:01Z`), Kinesis with
        milliseconds (`2022-07-13T13:48:01.000Z`).
        """
        if self.event_source == "aws:dynamodb":
            return iso_seconds(epoch_seconds)
        return iso_millis(epoch_seconds)


def iso_seconds(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(int(epoch_seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_millis(epoch_seconds: float) -> str:
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
