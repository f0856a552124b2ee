"""Per-record handlers that `streams dlq redrive --handler tests.dlq_handlers:...` loads."""

from __future__ import annotations

from typing import Any

from streams import Poison

#: (key, sequence number) of every record the fixed handler handled, in order.
HANDLED: list[tuple[str, str]] = []


def fixed(record: Any) -> None:
    HANDLED.append((record.keys["childId"], record.sequence_number))


def still_broken(record: Any) -> None:
    raise Poison("still broken after the fix")
