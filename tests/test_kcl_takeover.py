"""Two workers on one KCL application, and one of them killed (`make test-kcl`, marker `fleet`).

Two MultiLangDaemons (`workerIdentifier` A and B) share a 4-shard stream on kinesis-mock while a
producer keeps writing; then one is killed with SIGKILL to its process group (the daemon and its
workers at once, as when a machine dies). The other takes its leases over. KCL 3 elects a leader
that assigns the leases; killing the leader stalls assignment for its 2-minute lock (docs/kcl.md),
so the worker killed is the other one.

What is checked, for every lease holder (a worker process: one per shard lease) from the journal
the handler keeps: it starts on the record right after the checkpoint its `initialize` named and
handles the shard's records from there in order, without a gap; the survivor's checkpoint is the
one in the lease table at the kill; so records repeat only after the last checkpoint, and every
record written is handled. The test prints the figures (time from the kill to the survivor's
first record on each shard taken over; records repeated).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from tests.kcl_fleet import Fleet, Handled, by_shard, running

pytestmark = pytest.mark.fleet

KEYS = [f"child-{i}" for i in range(16)]
#: A backlog just before the kill: 100 records a shard at 20 ms each keep a batch in flight,
#: done but not yet checkpointed, when the worker dies.
BACKLOG = 400
BACKLOG_WORK_MS = 20


class Producer(threading.Thread):
    """Writes 16 records every 0.2 s until stopped: records keep arriving during the takeover."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.fleet = fleet
        self.numbers = itertools.count()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            self.fleet.put((key, {"n": next(self.numbers), "sleep_ms": 2}) for key in KEYS)

    def stop(self) -> None:
        self.halt.set()
        self.join()


@pytest.fixture(scope="module")
def pair(
    kinesis_mock: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Fleet, Producer]]:
    """Workers A and B started together, once both hold leases and have handled records."""
    fleet = Fleet(kinesis_mock, moto_endpoint, tmp_path_factory.mktemp("takeover"))
    producer = Producer(fleet)
    with running(fleet):
        for name in "AB":
            properties = fleet.write_properties(
                fleet.folder / f"{name}.properties", lines=[f"workerIdentifier = {name}"]
            )
            fleet.start(name, properties)
        producer.start()
        try:
            fleet.wait(
                "both workers holding leases and handling records",
                lambda: (
                    {lease["owner"] for lease in fleet.leases().values()} == {"A", "B"}
                    and {r.daemon for r in fleet.handled()} == {"A", "B"}
                ),
            )
            yield fleet, producer
        finally:
            producer.stop()


def test_two_workers_share_the_shards_of_one_application(pair: tuple[Fleet, Producer]) -> None:
    fleet, _ = pair

    leases = fleet.leases()

    assert set(leases) == {s["ShardId"] for s in fleet.open_shards()}
    owners = collections.Counter(lease["owner"] for lease in leases.values())
    assert set(owners) == {"A", "B"}
    # One holder per shard at any time: every worker process handled a single shard.
    handled = fleet.handled()
    assert all(
        len({r.shard for r in handled if r.pid == pid}) == 1 for pid in {r.pid for r in handled}
    )


def test_a_killed_worker_s_shards_resume_after_their_last_checkpoint_on_the_survivor(
    pair: tuple[Fleet, Producer],
) -> None:
    fleet, producer = pair
    # GIVEN the follower (not KCL's leader) holding leases, with a batch in flight on each
    leader = fleet.wait("a leader", fleet.leader)
    victim, survivor = ("B", "A") if leader == "A" else ("A", "B")
    fleet.put(
        (KEYS[n % len(KEYS)], {"backlog": n, "sleep_ms": BACKLOG_WORK_MS}) for n in range(BACKLOG)
    )
    fleet.wait(
        f"{victim} busy with the backlog",
        lambda: sum(1 for r in fleet.handled() if r.daemon == victim and "backlog" in r.body) >= 10,
    )

    # WHEN it is killed: SIGKILL to its process group, the daemon and its workers at once
    killed_at = time.time()
    fleet.daemons[victim].kill()
    at_kill = fleet.leases()  # no one can move these checkpoints until the survivor takes over
    taken = sorted(shard for shard, lease in at_kill.items() if lease["owner"] == victim)
    assert taken, f"{victim} held no lease when killed: {at_kill}"

    # THEN the survivor takes every one of its shards over
    def first_after_kill() -> dict[str, Handled] | None:
        firsts: dict[str, Handled] = {}
        for record in fleet.handled():
            if record.daemon == survivor and record.t > killed_at and record.shard in taken:
                firsts.setdefault(record.shard, record)
        return firsts if set(firsts) == set(taken) else None

    firsts = fleet.wait(f"{survivor} handling {taken}", first_after_kill)
    producer.stop()
    wanted = {(int(p.sequence), 0) for p in fleet.puts}
    fleet.wait(
        "every record written handled", lambda: wanted <= {r.position for r in fleet.handled()}
    )
    handled = fleet.handled()
    leases = fleet.leases_taken()
    shards = {
        shard: [int(p.sequence) for p in puts] for shard, puts in by_shard(fleet.puts).items()
    }

    # Every lease holder resumed right after the checkpoint it was given, and left no gap.
    by_holder: dict[int, list[Handled]] = collections.defaultdict(list)
    for record in handled:
        by_holder[record.pid].append(record)
    for pid, mine in by_holder.items():
        (shard,) = {r.shard for r in mine}
        lease = leases[pid]
        start = sum(1 for sequence in shards[shard] if not after(str(sequence), lease.checkpoint))
        assert [int(r.sequence) for r in mine] == shards[shard][start : start + len(mine)], (
            f"worker {pid} ({lease.daemon}) on {shard} after checkpoint {lease.checkpoint}"
        )

    # The survivor started each shard it took over at the checkpoint in the table at the kill.
    for shard in taken:
        holder = leases[firsts[shard].pid]
        assert (holder.daemon, holder.checkpoint) == (survivor, at_kill[shard]["checkpoint"])

    # So the victim's records after its last checkpoint run once more on the survivor, and no
    # record before a checkpoint runs twice (the holders' runs above start after theirs).
    counts = collections.Counter(r.position for r in handled)
    repeated = {position for position, count in counts.items() if count > 1}
    after_checkpoint = {
        r.position
        for r in handled
        if r.daemon == victim
        and r.shard in taken
        and after(r.sequence, at_kill[r.shard]["checkpoint"])
    }
    assert {counts[position] for position in after_checkpoint} <= {2}

    delays = {shard: round(firsts[shard].t - killed_at, 1) for shard in taken}
    print(
        f"\nKCL takeover: {victim} killed holding {len(taken)} of {len(shards)} shards; "
        f"{survivor}'s first record on each {delays} s after the kill; "
        f"{len(after_checkpoint)} records repeated, all after the last checkpoint "
        f"({len(repeated)} handled twice in the whole run); "
        f"{len(wanted)} records written, none skipped"
    )


def after(sequence: str, checkpoint: str) -> bool:
    """Whether KCL delivers the record again to a holder resuming from `checkpoint`."""
    return checkpoint == "TRIM_HORIZON" or int(sequence) > int(checkpoint)
