"""One worker on a real KCL fleet: KCL's MultiLangDaemon, a 4-shard stream on kinesis-mock, the
lease table and the dead-letter queue on moto's server (`tests/kcl_fleet.py`).

Slow (the daemon takes 30-45 s to its first lease), so marked `fleet`: `make test-kcl` runs them,
`make test` does not (`pytest -m fleet tests/test_kcl_fleet.py` by hand). One daemon serves the
whole module: the records are written before it starts, and each test checks one rule on what it
did; the split comes last, while it runs.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator

import pytest

from tests.kcl_fleet import Fleet, Put, by_shard, decoded, running
from tests.kcl_handlers import kpl_aggregate

pytestmark = pytest.mark.fleet

KEYS = [f"child-{i}" for i in range(16)]
POISON = {37, 150, 263}
RECORDS = 400
#: KPL aggregates: five user records each, all under one partition key. KCL drops a whole
#: aggregate when a user record hashes outside the shard it was read from (docs/kcl.md).
AGGREGATES = 3
USER_RECORDS = 5
POISON_USER_RECORD = (1, 2)  # aggregate 1's third user record


@pytest.fixture(scope="module")
def solo(
    kinesis_mock: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """The fleet of one daemon, once it has handled everything written before it started."""
    fleet = Fleet(kinesis_mock, moto_endpoint, tmp_path_factory.mktemp("solo"))
    with running(fleet):
        fleet.put(
            (KEYS[n % len(KEYS)], {"n": n, "poison": True} if n in POISON else {"n": n})
            for n in range(RECORDS)
        )
        for j in range(AGGREGATES):
            user_records = [
                (
                    f"agg-{j}",
                    json.dumps({"agg": j, "i": i, "poison": (j, i) == POISON_USER_RECORD}).encode(),
                )
                for i in range(USER_RECORDS)
            ]
            key, data = kpl_aggregate(user_records)
            fleet.put([(key, data)])
        properties = fleet.write_properties(fleet.folder / "kcl.properties", "--concurrency", "4")
        fleet.start("solo", properties)
        expected = len(expected_positions(fleet.puts))
        parked = len(POISON) + 1
        fleet.wait(
            f"{expected} records handled and {parked} parked",
            lambda: len(fleet.handled()) >= expected and fleet.parked() >= parked,
        )
        yield fleet


def is_aggregate(put: Put) -> bool:
    return put.key.startswith("agg-")


def expected_positions(puts: list[Put]) -> set[tuple[int, int]]:
    """(sequence number, sub-sequence number) of every record the handler must succeed on."""
    positions = set()
    for put in puts:
        if is_aggregate(put):
            j = int(put.key.removeprefix("agg-"))
            positions |= {
                (int(put.sequence), i) for i in range(USER_RECORDS) if (j, i) != POISON_USER_RECORD
            }
        elif not put.body.get("poison"):
            positions.add((int(put.sequence), 0))
    return positions


def test_every_record_is_handled_once_and_in_order_per_partition_key(solo: Fleet) -> None:
    handled = solo.handled()

    counts = collections.Counter(record.position for record in handled)
    assert set(counts) == expected_positions(solo.puts)
    assert set(counts.values()) == {1}
    # Four keys at a time in each worker (--concurrency 4), never two records of one key.
    for key in KEYS:
        written = [p.body["n"] for p in solo.puts if p.key == key and not p.body.get("poison")]
        assert [r.body["n"] for r in handled if r.key == key] == written
    assert {r.daemon for r in handled} == {"solo"}
    assert {r.shard for r in handled} == {p.shard for p in solo.puts}


def test_poison_is_parked_with_the_full_record_and_the_shard_moves_on(solo: Fleet) -> None:
    letters = {
        (letter["sequenceNumber"], letter["subSequenceNumber"]): letter
        for letter in solo.dead_letters()
    }

    poison = [p for p in solo.puts if p.body.get("poison")]
    aggregate = next(p for p in solo.puts if p.key == f"agg-{POISON_USER_RECORD[0]}")
    assert set(letters) == {(p.sequence, 0) for p in poison} | {
        (aggregate.sequence, POISON_USER_RECORD[1])
    }
    for put in poison:
        letter = letters[(put.sequence, 0)]
        assert letter["reason"] == "poison"
        assert letter["shardId"] == put.shard
        assert letter["error"]["type"] == "Poison"
        record = letter["record"]
        assert record["eventID"] == f"{put.shard}:{put.sequence}"
        assert record["eventSourceARN"] == solo.stream_arn
        assert record["kinesis"]["partitionKey"] == put.key
        assert record["kinesis"]["sequenceNumber"] == put.sequence
        assert decoded(record) == put.data
    # A user record of an aggregate is parked alone, with its own data and sub-sequence number.
    user = letters[(aggregate.sequence, POISON_USER_RECORD[1])]["record"]
    assert json.loads(decoded(user)) == {
        "agg": POISON_USER_RECORD[0],
        "i": POISON_USER_RECORD[1],
        "poison": True,
    }
    assert user["kinesis"]["partitionKey"] == aggregate.key


def test_kpl_aggregates_reach_the_handler_as_user_records_with_sub_sequence_numbers(
    solo: Fleet,
) -> None:
    handled = [r for r in solo.handled() if r.key.startswith("agg-")]

    for put in (p for p in solo.puts if is_aggregate(p)):
        j = int(put.key.removeprefix("agg-"))
        mine = [r for r in handled if r.sequence == put.sequence]
        assert [(r.sub, r.body["i"]) for r in mine] == [
            (i, i) for i in range(USER_RECORDS) if (j, i) != POISON_USER_RECORD
        ]
        assert {(r.shard, r.key, r.body["agg"]) for r in mine} == {(put.shard, put.key, j)}


def test_each_shard_is_checkpointed_at_its_last_record_in_the_lease_table(solo: Fleet) -> None:
    # The checkpoint at a batch's last record comes right after its handler returns.
    expected = {}
    for shard, puts in by_shard(solo.puts).items():
        last = puts[-1]
        expected[shard] = (last.sequence, USER_RECORDS - 1 if is_aggregate(last) else 0)

    def checkpoints() -> dict[str, tuple[str | None, int]]:
        return {
            shard: (lease["checkpoint"], lease["sub"]) for shard, lease in solo.leases().items()
        }

    solo.wait("a checkpoint at every shard's last record", lambda: checkpoints() == expected, 60)
    assert len({lease["owner"] for lease in solo.leases().values()}) == 1


def test_a_split_while_the_fleet_runs_finishes_the_parent_before_the_children_start(
    solo: Fleet,
) -> None:
    # GIVEN the shard with most keys, busy with a backlog when it is split
    keys_by_shard = collections.defaultdict(set)
    for put in solo.puts:
        if not is_aggregate(put):
            keys_by_shard[put.shard].add(put.key)
    parent = max(keys_by_shard, key=lambda shard: len(keys_by_shard[shard]))
    keys = sorted(keys_by_shard[parent])
    before = solo.put((keys[n % len(keys)], {"m": n, "sleep_ms": 100}) for n in range(150))
    assert {p.shard for p in before} == {parent}
    (listed,) = (s for s in solo.open_shards() if s["ShardId"] == parent)
    low, high = (int(listed["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))

    # WHEN it is split, and its keys keep coming
    solo.kinesis.split_shard(
        StreamName=solo.name, ShardToSplit=parent, NewStartingHashKey=str((low + high) // 2)
    )
    solo.wait_active()
    after = solo.put((keys[n % len(keys)], {"m": 150 + n}) for n in range(150))
    children = {p.shard for p in after}
    assert parent not in children

    # THEN every record is handled once, every record of the parent before any of a child
    positions = {(int(p.sequence), 0) for p in [*before, *after]}
    solo.wait(
        "the split's records handled",
        lambda: positions <= {r.position for r in solo.handled()},
    )
    handled = [r for r in solo.handled() if "m" in r.body]
    assert collections.Counter(r.position for r in handled) == dict.fromkeys(positions, 1)
    shards = [r.shard for r in handled]
    last_parent = max(i for i, shard in enumerate(shards) if shard == parent)
    first_child = min(i for i, shard in enumerate(shards) if shard in children)
    assert last_parent < first_child
    for key in keys:
        assert [r.body["m"] for r in handled if r.key == key] == [
            p.body["m"] for p in [*before, *after] if p.key == key
        ]
    # The parent's lease ends at SHARD_END; the children's name it as their parent.
    solo.wait(
        "the parent's SHARD_END checkpoint",
        lambda: solo.leases()[parent]["checkpoint"] == "SHARD_END",
        60,
    )
    leases = solo.leases()
    assert {shard: leases[shard]["parents"] for shard in children} == {
        child: [parent] for child in children
    }
