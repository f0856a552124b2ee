"""Process DynamoDB and Kinesis change streams: poison-safe, ordered, nothing lost silently."""

from streams.batch import BatchResult, Halted, Poison, RetryPolicy, StreamProcessor, Transient
from streams.deadletter import DeadLetter, SqsDeadLetterQueue, read_dead_letter
from streams.forward import QueueForwarder
from streams.ratelimit import RateLimit
from streams.records import (
    DynamoDBChange,
    DynamoDBRecord,
    Image,
    KinesisRecord,
    RecordDecodeError,
    StreamRecord,
)
from streams.writer import (
    FailedWrite,
    InvalidItemError,
    TableWriteError,
    TableWriter,
    WriteReport,
)

__all__ = [
    "BatchResult",
    "DeadLetter",
    "DynamoDBChange",
    "DynamoDBRecord",
    "FailedWrite",
    "Halted",
    "Image",
    "InvalidItemError",
    "KinesisRecord",
    "Poison",
    "QueueForwarder",
    "RateLimit",
    "RecordDecodeError",
    "RetryPolicy",
    "SqsDeadLetterQueue",
    "StreamProcessor",
    "StreamRecord",
    "TableWriteError",
    "TableWriter",
    "Transient",
    "WriteReport",
    "read_dead_letter",
]
