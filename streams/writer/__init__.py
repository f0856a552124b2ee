"""Writing bursts of items to a DynamoDB table without losing one silently: `TableWriter`.

- `streams.writer.table`: `TableWriter`, the public face;
- `streams.writer.encode`: items in DynamoDB's JSON, checked against DynamoDB's rules;
- `streams.writer.pacing`: the sending rate, following throttling;
- `streams.writer.pipeline`: per-key order, batches, retries, and the report;
- `streams.writer.ingest`: JSON Lines into a writer, resumable (`streams write`).
"""

from streams.writer.encode import InvalidItemError, TableWriteError
from streams.writer.pacing import RatePolicy
from streams.writer.pipeline import FailedWrite, WriteReport
from streams.writer.table import TableWriter

__all__ = [
    "FailedWrite",
    "InvalidItemError",
    "RatePolicy",
    "TableWriteError",
    "TableWriter",
    "WriteReport",
]
