"""A local KCL fleet for the end-to-end tests (`make test-kcl`, marker `fleet`).

The stream is on kinesis-mock, KCL's lease tables and the dead-letter queue on moto's server,
both on 127.0.0.1. Each daemon is the real MultiLangDaemon, started with `streams kcl run` from
a file `streams kcl properties --local` wrote, in a process group of its own (the daemon and the
workers it starts), killed by group when the test ends, also on failure, or when the test
process dies. The workers run `tests.kcl_fleet_handler:handle`, which journals every record.

The daemon's environment names no endpoint for KCL: the properties file must point it at the
local ones. It does name the dead-letter queue's (`AWS_ENDPOINT_URL_SQS`), for the workers.
"""

from __future__ import annotations

import base64
import collections
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from unittest import mock

import boto3
import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
SERVICE = "kcl-fleet"
#: JVM start-up in about 3 s instead of 10 on a busy machine: the client compiler only, one GC
#: thread. Throughput does not matter here.
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
#: Not a timing assertion: how long a wait lasts before the test fails instead of hanging.
#: A daemon's first lease can take 45 s (KCL waits 1-30 s at random while the table is empty).
PATIENCE = 240.0
_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # The daemon is killed when the test process dies, even by SIGKILL; its workers then see
    # their stdin close and exit.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float = PATIENCE,
    diagnosis: Callable[[], str] = str,
) -> T:
    """`check()` once it is truthy; the test fails, saying what it waited for, after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}\n{diagnosis()}")
        time.sleep(0.2)


@dataclass(frozen=True)
class Put:
    """A record written to the stream: where it went, and what it holds."""

    shard: str
    sequence: str
    key: str
    body: dict[str, Any]
    data: bytes


@dataclass(frozen=True)
class Handled:
    """A journal line: a record one worker process handled."""

    pid: int
    daemon: str
    shard: str
    sequence: str
    sub: int
    key: str
    body: dict[str, Any]
    t: float

    @property
    def position(self) -> tuple[int, int]:
        return int(self.sequence), self.sub


@dataclass(frozen=True)
class LeaseTaken:
    """A journal line: a worker process started on a shard lease, after `checkpoint`."""

    pid: int
    daemon: str
    checkpoint: str
    sub: int | None
    t: float


class Daemon:
    """One `streams kcl run`: the MultiLangDaemon and, in its process group, its workers."""

    def __init__(self, name: str, properties: Path, env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.killed = False
        self._output: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "kcl", "run", "--properties", str(properties)],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )

    def kill(self) -> None:
        """SIGKILL to the whole group: the daemon and every worker it started, at once."""
        self.killed = True
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._output.close()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Fleet:
    """A stream on kinesis-mock, an application's lease tables on moto, and its daemons."""

    kinesis_endpoint: str
    moto_endpoint: str
    folder: Path
    shards: int = 4
    name: str = field(default_factory=lambda: f"fleet-{uuid.uuid4().hex[:10]}")
    daemons: dict[str, Daemon] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kinesis = boto3.client(
            "kinesis", endpoint_url=self.kinesis_endpoint, region_name=REGION
        )
        self.dynamodb = boto3.client(
            "dynamodb", endpoint_url=self.moto_endpoint, region_name=REGION
        )
        self.sqs = boto3.client("sqs", endpoint_url=self.moto_endpoint, region_name=REGION)
        self.kinesis.create_stream(StreamName=self.name, ShardCount=self.shards)
        self.wait_active()
        self.stream_arn = self.kinesis.describe_stream_summary(StreamName=self.name)[
            "StreamDescriptionSummary"
        ]["StreamARN"]
        self.queue_url = self.sqs.create_queue(QueueName=self.name)["QueueUrl"]
        self.journal = self.folder / "journal.jsonl"
        self.puts: list[Put] = []

    @property
    def application(self) -> str:
        return self.name

    def wait_active(self) -> None:
        self.wait(
            f"stream {self.name} to be ACTIVE",
            lambda: (
                self.kinesis.describe_stream_summary(StreamName=self.name)[
                    "StreamDescriptionSummary"
                ]["StreamStatus"]
                == "ACTIVE"
            ),
        )

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = PATIENCE) -> T:
        """`wait_for`, failing at once, with the daemons' logs, when a daemon stops by itself."""

        def checked() -> T | None:
            for daemon in self.daemons.values():
                if not daemon.killed and daemon.process.poll() is not None:
                    pytest.fail(
                        f"daemon {daemon.name} exited ({daemon.process.returncode}) while "
                        f"waiting for {what}\n{self.diagnosis()}"
                    )
            return check()

        return wait_for(what, checked, timeout, self.diagnosis)

    # the daemons ---------------------------------------------------------------------------

    def write_properties(self, path: Path, *options: str, lines: Sequence[str] = ()) -> Path:
        """`streams kcl properties --local`, with the endpoints in the environment a user sets
        (moto for everything but the stream, kinesis-mock for the stream); `lines` appended."""
        endpoints = {
            "AWS_ENDPOINT_URL": self.moto_endpoint,
            "AWS_ENDPOINT_URL_KINESIS": self.kinesis_endpoint,
        }
        with mock.patch.dict(os.environ, endpoints):
            code = main(
                [
                    "kcl",
                    "properties",
                    "--stream",
                    self.name,
                    "--application",
                    self.application,
                    "--handler",
                    "tests.kcl_fleet_handler:handle",
                    "--queue-url",
                    self.queue_url,
                    "--local",
                    "--output",
                    str(path),
                    *options,
                ]
            )
        assert code == 0
        if lines:
            with path.open("a", encoding="iso-8859-1") as properties:
                properties.write("".join(f"{line}\n" for line in lines))
        return path

    def start(
        self, name: str, properties: Path, environment: Mapping[str, str] | None = None
    ) -> Daemon:
        env = {
            name: value for name, value in os.environ.items() if not name.startswith("AWS_ENDPOINT")
        }
        env.update(
            {
                # The workers' boto3 parks poison in the queue on moto; KCL's own clients find
                # their endpoints in the properties file only.
                "AWS_ENDPOINT_URL_SQS": self.moto_endpoint,
                "JDK_JAVA_OPTIONS": QUICK_JVM,
                "KCL_FLEET_JOURNAL": str(self.journal),
                "KCL_FLEET_DAEMON": name,
                "POWERTOOLS_SERVICE_NAME": SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": "kcl-fleet-tests",
                **(environment or {}),
            }
        )
        daemon = Daemon(name, properties, env, self.folder / f"daemon-{name}.log")
        self.daemons[name] = daemon
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()

    def diagnosis(self) -> str:
        """What a failing test shows: the end of every daemon's log, and the leases."""
        parts = [f"--- daemon {d.name} ({d.log}):\n{d.tail()}" for d in self.daemons.values()]
        parts.append(f"--- leases: {self.leases()}")
        return "\n".join(parts)

    # the stream ----------------------------------------------------------------------------

    def put(self, records: Iterable[tuple[str, dict[str, Any] | bytes]]) -> list[Put]:
        """PutRecords, in order, 500 at a time; (partition key, JSON body or raw data) each."""
        written: list[Put] = []
        pending = list(records)
        while pending:
            batch, pending = pending[:500], pending[500:]
            entries = [
                {"PartitionKey": key, "Data": body if isinstance(body, bytes) else _json(body)}
                for key, body in batch
            ]
            result = self.kinesis.put_records(StreamName=self.name, Records=entries)
            # A failed entry would reorder a key: the tests write far below any limit.
            assert result.get("FailedRecordCount", 0) == 0, result
            for (key, body), entry, out in zip(batch, entries, result["Records"], strict=True):
                written.append(
                    Put(
                        shard=out["ShardId"],
                        sequence=out["SequenceNumber"],
                        key=key,
                        body=body if isinstance(body, dict) else {},
                        data=entry["Data"],
                    )
                )
        self.puts.extend(written)
        return written

    def open_shards(self) -> list[dict[str, Any]]:
        shards = self.kinesis.list_shards(StreamName=self.name)["Shards"]
        return [s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]]

    # what happened -------------------------------------------------------------------------

    def journal_lines(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        text = self.journal.read_text()
        # A line still being written has no newline yet.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def handled(self) -> list[Handled]:
        return [
            Handled(
                pid=line["pid"],
                daemon=line["daemon"],
                shard=line["shard"],
                sequence=line["seq"],
                sub=line["sub"],
                key=line["key"],
                body=line["body"],
                t=line["t"],
            )
            for line in self.journal_lines()
            if "lease" not in line
        ]

    def leases_taken(self) -> dict[int, LeaseTaken]:
        """Each worker process's lease, by process id."""
        return {
            line["pid"]: LeaseTaken(
                line["pid"], line["daemon"], line["lease"], line["sub"], line["t"]
            )
            for line in self.journal_lines()
            if "lease" in line
        }

    def leases(self) -> dict[str, dict[str, Any]]:
        """KCL's lease table: shard id -> owner, checkpoint, sub-sequence number, parents."""
        items = self._scan(self.application)
        return {
            item["leaseKey"]["S"]: {
                "owner": item.get("leaseOwner", {}).get("S"),
                "checkpoint": item.get("checkpoint", {}).get("S"),
                "sub": int(item.get("checkpointSubSequenceNumber", {}).get("N", "0")),
                "parents": item.get("parentShardId", {}).get("SS", []),
            }
            for item in items
        }

    def leader(self) -> str | None:
        """The worker holding KCL 3's leader lock (`<application>-CoordinatorState`)."""
        for item in self._scan(f"{self.application}-CoordinatorState"):
            if "ownerName" in item:
                return str(item["ownerName"]["S"])
        return None

    def _scan(self, table: str) -> list[dict[str, Any]]:
        """The table's items; none before the daemon has created it."""
        try:
            return self.dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return []

    def parked(self) -> int:
        """How many messages the dead-letter queue holds (without receiving them)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(count) for count in attributes.values())

    def dead_letters(self) -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = []
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=600
            ).get("Messages", [])
            if not messages:
                return letters
            letters += [json.loads(message["Body"]) for message in messages]


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def by_shard(puts: Iterable[Put]) -> dict[str, list[Put]]:
    shards: dict[str, list[Put]] = collections.defaultdict(list)
    for put in puts:
        shards[put.shard].append(put)
    return {shard: sorted(p, key=lambda p: int(p.sequence)) for shard, p in shards.items()}


def decoded(record: Mapping[str, Any]) -> bytes:
    return base64.b64decode(record["kinesis"]["data"])


@contextmanager
def running(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet until the block ends; its daemons killed (by process group) whatever happens."""
    try:
        yield fleet
    finally:
        fleet.stop()
