"""Process DynamoDB and Kinesis change streams: poison-safe, ordered, nothing lost silently."""

from streams.batch import BatchResult, Halted, Poison, RetryPolicy, StreamProcessor, Transient
from streams.deadletter import DeadLetter, SqsDeadLetterQueue, read_dead_letter
from streams.records import DynamoDBRecord, Image, KinesisRecord, RecordDecodeError, StreamRecord

__all__ = [
    "BatchResult",
    "DeadLetter",
    "DynamoDBRecord",
    "Halted",
    "Image",
    "KinesisRecord",
    "Poison",
    "RecordDecodeError",
    "RetryPolicy",
    "SqsDeadLetterQueue",
    "StreamProcessor",
    "StreamRecord",
    "Transient",
    "read_dead_letter",
]
