"""The ticket-queue scenario's function: every change of the ticket table, forwarded to a FIFO
queue by `QueueForwarder`, in order per ticket, once per change.

The message is shaped by `tickets.ticket_message`; a change that cannot be shaped (no status,
or one the queue's readers do not know) is poison: parked with its reason, and the shard goes
on: one bad ticket never clogs the queue behind it.
"""

from __future__ import annotations

import os
from typing import Any

from streams import QueueForwarder, StreamProcessor
from streams.demo.functions.tickets import ticket_message

forward = QueueForwarder(os.environ["TICKET_QUEUE_URL"], shape=ticket_message)
processor = StreamProcessor(forward, concurrency=int(os.environ.get("STREAMS_CONCURRENCY", "1")))


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return processor.process(event, context)
