"""Shard lineage: a parent shard is finished before any of its children starts."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from streams.sources.base import Shard


def startable_shards(
    shards: Sequence[Shard], *, finished: Collection[str], started: Collection[str]
) -> list[Shard]:
    """The listed shards that may start now, in listing order.

    A shard may start when it has neither started nor finished and each of its parents has
    finished or is no longer listed (a parent past the stream's retention is gone, and so are
    its records). Kinesis merges give a child two parents: both must be done.
    """
    listed = {shard.shard_id for shard in shards}
    return [
        shard
        for shard in shards
        if shard.shard_id not in started
        and shard.shard_id not in finished
        and all(parent in finished or parent not in listed for parent in shard.parent_shard_ids)
    ]
