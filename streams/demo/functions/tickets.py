"""The ticket queue's message: what its readers get of a ticket change (no AWS, no settings)."""

from __future__ import annotations

from typing import Any

from streams import DynamoDBRecord

#: The statuses the queue's readers know; a change with another (or none) is poison.
STATUSES = ("open", "assigned", "waiting", "resolved", "closed")


def ticket_message(record: DynamoDBRecord) -> dict[str, Any]:
    """The ticket, its version and status, and where it came from. Raises when the change
    cannot be shaped (`QueueForwarder` then parks it as poison)."""
    if record.event_name == "REMOVE":
        return {"ticketId": record.keys["ticketId"], "deleted": True}
    image = record.new_image
    if image is None:
        raise ValueError("a change without a new image: the stream must include NEW_IMAGE")
    status = image["status"]  # KeyError: no status
    if status not in STATUSES:
        raise ValueError("unknown status")
    return {
        "ticketId": image["ticketId"],
        "version": image["version"],
        "status": status,
        "title": image.get("title"),
        "sequenceNumber": record.sequence_number,
    }
