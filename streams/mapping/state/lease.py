"""The lease: one mapping per function and event source at a time.

`acquire_lease` takes the lease with a conditional write, or waits (saying so in the log) while
another mapping holds it. A lease is taken over when it expires (no renewal for
`lease_seconds`), and at once when its holder ran on this host and its process is gone (a
``kill -9``, a crash). Writes that must be fenced (checkpoints) carry `lease_condition`, so a
mapping that lost its lease can never move a shard's position.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from streams.mapping.state.layout import LEASE_SK, MappingId, MappingItems, number

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, TransactWriteItemTypeDef

__all__ = [
    "LeaseBusy",
    "LeaseHeartbeat",
    "LeaseHolder",
    "LeaseLost",
    "LeasedMapping",
    "lease_holder",
    "pid_alive",
]

logger = logging.getLogger("streams.mapping.state")

_RELEASED = 0.0  # the expiry of a lease given up by its holder


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a mapping's lease, until when (epoch seconds)."""

    owner: str
    host: str
    pid: int
    expires_at: float
    renewed_at: float

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires_at, tz=UTC).isoformat(timespec="seconds")
        return f"{self.owner} (host {self.host}, pid {self.pid}, lease until {until})"


class LeaseBusy(Exception):
    """Another mapping holds the lease (`acquire_lease` gave up waiting)."""

    def __init__(self, mapping: MappingId, holder: LeaseHolder) -> None:
        super().__init__(
            f"mapping {mapping.function} on {mapping.source_arn} is run by {holder.describe()}"
        )
        self.holder = holder


class LeaseLost(Exception):
    """This mapping no longer holds its lease: another took over. Stop without checkpointing."""


def pid_alive(pid: int) -> bool:
    """True if process `pid` runs on this host (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs: trust the signal check
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def lease_holder(item: Mapping[str, AttributeValueTypeDef]) -> LeaseHolder:
    return LeaseHolder(
        owner=item["owner"]["S"],
        host=item["host"]["S"],
        pid=int(item["pid"]["N"]),
        expires_at=float(item["expiresAt"]["N"]),
        renewed_at=float(item["renewedAt"]["N"]),
    )


class LeasedMapping(MappingItems):
    """A mapping's partition of the state table, held under its lease (see the module
    docstring). `clock` (epoch seconds) and `sleep` are injectable for the lease's rules;
    `host`, `pid` and `pid_alive` identify this process and tell whether a holder's process on
    this host still runs."""

    def __init__(
        self,
        mapping: MappingId,
        *,
        client: DynamoDBClient,
        table_name: str,
        lease_seconds: float = 30.0,
        poll_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        host: str | None = None,
        pid: int | None = None,
        pid_alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        super().__init__(mapping, client, table_name)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._sleep = sleep
        self._pid_alive = pid_alive

    def acquire_lease(
        self, timeout: float | None = None, *, stop: threading.Event | None = None
    ) -> LeaseHolder | None:
        """Take the mapping's lease, waiting while another live mapping holds it.

        Logs one WARNING per holder waited for. Raises `LeaseBusy` after `timeout` seconds
        (None: wait as long as it takes). With `stop`, the wait ends as soon as it is set, and
        then the result is None (only then).
        """
        give_up = None if timeout is None else self._clock() + timeout
        announced: str | None = None
        while stop is None or not stop.is_set():
            holder = self._try_acquire()
            if holder.owner == self.owner:
                return holder
            if give_up is not None and self._clock() >= give_up:
                raise LeaseBusy(self.mapping, holder)
            if holder.owner != announced:
                announced = holder.owner
                logger.warning(
                    "mapping %s on %s: waiting, another mapping runs it: %s",
                    self.mapping.function,
                    self.mapping.source_arn,
                    holder.describe(),
                )
            if stop is None:
                self._sleep(self.poll_seconds)
            else:
                stop.wait(self.poll_seconds)
        return None

    def renew_lease(self) -> LeaseHolder:
        """Extend the lease by `lease_seconds` (the heartbeat). Raises `LeaseLost`."""
        now = self._clock()
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key=self._item_key(LEASE_SK),
                UpdateExpression="SET expiresAt = :expires, renewedAt = :now ADD version :one",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":expires": {"N": number(now + self.lease_seconds)},
                    ":now": {"N": number(now)},
                    ":one": {"N": "1"},
                    ":owner": {"S": self.owner},
                },
            )
        except self.client.exceptions.ConditionalCheckFailedException as error:
            raise self._lost() from error
        return LeaseHolder(self.owner, self.host, self.pid, now + self.lease_seconds, now)

    def release_lease(self) -> None:
        """On a clean stop: give the lease up so that the next mapping starts at once (it
        expires now: `expires_at` 0)."""
        # Not ours any more: nothing to give up.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.update_item(
                TableName=self.table_name,
                Key=self._item_key(LEASE_SK),
                UpdateExpression="SET expiresAt = :released ADD version :one",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":released": {"N": number(_RELEASED)},
                    ":one": {"N": "1"},
                    ":owner": {"S": self.owner},
                },
            )

    def heartbeat(
        self, on_lost: Callable[[LeaseLost], None], interval: float | None = None
    ) -> LeaseHeartbeat:
        """A thread that renews the lease every `interval` seconds (default a third of
        `lease_seconds`) while the returned context is entered."""
        return LeaseHeartbeat(self, on_lost, interval or self.lease_seconds / 3)

    def lease_condition(self) -> TransactWriteItemTypeDef:
        """The transaction item that makes a write happen only while this mapping holds the
        lease."""
        return {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": self._item_key(LEASE_SK),
                "ConditionExpression": "#owner = :owner",
                "ExpressionAttributeNames": {"#owner": "owner"},
                "ExpressionAttributeValues": {":owner": {"S": self.owner}},
            }
        }

    def _try_acquire(self) -> LeaseHolder:
        """One attempt: the holder afterwards (ourselves when it worked)."""
        now = self._clock()
        current = self._get(LEASE_SK)
        version = 0
        if current is not None:
            holder = lease_holder(current)
            version = int(current["version"]["N"])
            if holder.owner != self.owner:
                if holder.expires_at > now and not self._holder_died_here(holder):
                    return holder
                if holder.expires_at > _RELEASED:
                    logger.warning(
                        "mapping %s on %s: taking over the lease of %s: %s",
                        self.mapping.function,
                        self.mapping.source_arn,
                        holder.describe(),
                        "it expired" if holder.expires_at <= now else "its process is gone",
                    )
        item: dict[str, AttributeValueTypeDef] = {
            **self._item_key(LEASE_SK),
            **self._mapping_attributes(),
            "owner": {"S": self.owner},
            "host": {"S": self.host},
            "pid": {"N": str(self.pid)},
            "expiresAt": {"N": number(now + self.lease_seconds)},
            "renewedAt": {"N": number(now)},
            "version": {"N": str(version + 1)},
        }
        try:
            # `version` only grows (a release keeps the item), so a lease read as expired
            # cannot be taken from a mapping that acquired it meanwhile.
            self.client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR version = :seen",
                ExpressionAttributeValues={":seen": {"N": str(version)}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return self._try_acquire()  # another mapping moved first: look again
        return lease_holder(item)

    def _holder_died_here(self, holder: LeaseHolder) -> bool:
        # Only a process on this host can be checked; elsewhere the lease must expire.
        return holder.host == self.host and not self._pid_alive(holder.pid)

    def _lost(self) -> LeaseLost:
        current = self._get(LEASE_SK)
        now_held_by = lease_holder(current).describe() if current else "nobody"
        return LeaseLost(
            f"mapping {self.mapping.function} on {self.mapping.source_arn}: this mapping "
            f"({self.owner}) does not hold the lease; now held by {now_held_by}"
        )


class LeaseHeartbeat:
    """Renews a store's lease every `interval` seconds in a thread, while entered.

    Calls `on_lost` once (from the thread) if another mapping took the lease over, then stops.
    A failed call to DynamoDB is logged and retried at the next beat: until the lease expires,
    no other mapping takes it.
    """

    def __init__(
        self,
        store: LeasedMapping,
        on_lost: Callable[[LeaseLost], None],
        interval: float,
    ) -> None:
        self._store = store
        self._on_lost = on_lost
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-heartbeat-{store.mapping.function}", daemon=True
        )

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._store.renew_lease()
            except LeaseLost as lost:
                self._on_lost(lost)
                return
            except (BotoCoreError, ClientError) as error:
                logger.warning("lease renewal failed (retrying): %s", error)
