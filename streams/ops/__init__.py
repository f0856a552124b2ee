"""Operations on the stack's queues after a failure: the dead-letter queue's reader and redrive.

Never ships to Lambda (the hydrate function's code, which does, is `streams.hydrate`).
"""

from streams.ops.dlq import DeadLetterQueueReader, ParkedMessage, RedriveReport, redrive

__all__ = ["DeadLetterQueueReader", "ParkedMessage", "RedriveReport", "redrive"]
