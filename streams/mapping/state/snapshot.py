"""The state table read back: what the monitor shows, without ever reading a shard."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.mapping.state import ShardState
from streams.mapping.state.layout import (
    COUNT_PREFIX,
    DEFAULT_TABLE_NAME,
    LEASE_SK,
    METRICS_PREFIX,
    SHARD_PREFIX,
    MappingId,
)
from streams.mapping.state.lease import LeaseHolder, lease_holder

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = ["MappingSnapshot", "ShardSnapshot", "read_mappings", "snapshot_of"]


@dataclass(frozen=True)
class ShardSnapshot:
    """What the table says about one shard (the monitor's view)."""

    shard_id: str
    checkpoint: str | None
    finished: bool
    counts: Mapping[str, float]
    iterator_age_ms: float | None
    state: ShardState | None
    last_outcome: str | None
    updated_at: float | None


@dataclass(frozen=True)
class MappingSnapshot:
    mapping: MappingId
    lease: LeaseHolder | None
    shards: tuple[ShardSnapshot, ...]  # by shard id


def snapshot_of(mapping: MappingId, items: Iterable[Mapping[str, Any]]) -> MappingSnapshot:
    lease: LeaseHolder | None = None
    checkpoints: dict[str, Mapping[str, Any]] = {}
    metrics: dict[str, Mapping[str, Any]] = {}
    for item in items:
        sk = item["sk"]["S"]
        if sk == LEASE_SK:
            lease = lease_holder(item)
        elif sk.startswith(SHARD_PREFIX):
            checkpoints[sk.removeprefix(SHARD_PREFIX)] = item
        elif sk.startswith(METRICS_PREFIX):
            metrics[sk.removeprefix(METRICS_PREFIX)] = item
    shards = []
    for shard_id in sorted(checkpoints.keys() | metrics.keys()):
        checkpoint = checkpoints.get(shard_id, {})
        figures = metrics.get(shard_id, {})
        updated = [float(i["updatedAt"]["N"]) for i in (checkpoint, figures) if "updatedAt" in i]
        shards.append(
            ShardSnapshot(
                shard_id=shard_id,
                checkpoint=checkpoint.get("sequenceNumber", {}).get("S"),
                finished=bool(checkpoint.get("finished", {}).get("BOOL", False)),
                counts={
                    name.removeprefix(COUNT_PREFIX): float(value["N"])
                    for name, value in sorted(figures.items())
                    if name.startswith(COUNT_PREFIX)
                },
                iterator_age_ms=(
                    float(figures["iteratorAgeMs"]["N"]) if "iteratorAgeMs" in figures else None
                ),
                state=figures.get("state", {}).get("S"),
                last_outcome=figures.get("lastOutcome", {}).get("S"),
                updated_at=max(updated) if updated else None,
            )
        )
    return MappingSnapshot(mapping, lease, tuple(shards))


def read_mappings(
    client: DynamoDBClient, table_name: str = DEFAULT_TABLE_NAME
) -> list[MappingSnapshot]:
    """Every mapping the table knows (for the monitor); none when there is no table yet."""
    items: dict[str, list[dict[str, Any]]] = {}
    ids: dict[str, MappingId] = {}
    try:
        for page in client.get_paginator("scan").paginate(TableName=table_name):
            for item in page.get("Items", []):
                pk = item["pk"]["S"]
                items.setdefault(pk, []).append(dict(item))
                ids[pk] = MappingId(item["function"]["S"], item["eventSourceARN"]["S"])
    except client.exceptions.ResourceNotFoundException:
        return []
    return [snapshot_of(ids[pk], items[pk]) for pk in sorted(items)]
