"""The handler the KCL fleet tests' workers run: `--handler tests.kcl_fleet_handler:handle`.

Every record handled is appended as one JSON line to the file `KCL_FLEET_JOURNAL` names, with the
worker's process id and daemon (`KCL_FLEET_DAEMON`), so a test sees which lease holder handled
what, in which order. A record whose JSON data has `"poison": true` raises `Poison`; one with
`"sleep_ms": N` works N milliseconds first (records in flight between checkpoints, a busy
parent shard).

Each worker process serves one shard lease. Its "shard lease taken" log line (the checkpoint
the daemon's `initialize` gave it) is appended too, as `{"lease": checkpoint, ...}`: a test
checks that a holder resumes right after the checkpoint it was given. The line is read off the
worker's own logger (Powertools' logger is the standard library's logger named after the service).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from streams import KinesisRecord, Poison

_JOURNAL = os.open(os.environ["KCL_FLEET_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_DAEMON = os.environ.get("KCL_FLEET_DAEMON", "")


def _append(entry: dict[str, Any]) -> None:
    # One write of one line: O_APPEND keeps lines whole across the workers and their threads.
    entry.update(pid=os.getpid(), daemon=_DAEMON, t=time.time())
    os.write(_JOURNAL, (json.dumps(entry) + "\n").encode())


class _LeaseTaken(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "shard lease taken":
            _append(
                {
                    "lease": getattr(record, "checkpoint", None),
                    "sub": getattr(record, "subSequenceNumber", None),
                }
            )


logging.getLogger(os.environ["POWERTOOLS_SERVICE_NAME"]).addHandler(_LeaseTaken())


def handle(record: KinesisRecord) -> None:
    body = record.json()
    if body.get("poison"):
        raise Poison("fleet test poison")
    if body.get("sleep_ms"):
        time.sleep(body["sleep_ms"] / 1000)
    _append(
        {
            "shard": record.shard_id,
            "seq": record.sequence_number,
            "sub": record.sub_sequence_number,
            "key": record.partition_key,
            "body": body,
        }
    )
