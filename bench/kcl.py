"""Records/s through one KCL worker beside `streams run`'s mapping, on one kinesis-mock stream.

For each input shape (partition keys, record size), a 4-shard stream on kinesis-mock is filled
with a backlog before anything reads it; then the same handler reads all of it three times:

- `streams run`'s mapping, before and after KCL (the mean counts: the machine's load drifts):
  the engine `streams run` runs (`EventSourceMapping`, Lambda's rules), the function in its
  worker processes (`StreamProcessor` around the handler, `BatchSize` 1000), checkpoints and the
  lease in its state table on moto's server. Built here as `streams.local.run.LocalMapping`
  builds it, but with its Kinesis client on kinesis-mock: `streams run` reads streams on its one
  endpoint (moto), and KCL cannot read moto's Kinesis (KCL's client speaks HTTP/2);
- one KCL worker: `streams kcl run` (the MultiLangDaemon, JVM defaults) from a file
  `streams kcl properties --local --max-records 1000` wrote, a new application each time, its
  lease table on moto's server; `streams kcl worker` runs the handler in `StreamProcessor`, one
  process per shard.

The handler decodes the record's JSON and appends the time to a journal file. Records/s is the
backlog over the time from the first record handled to the last (start-up, printed apart, is
not counted: KCL's is 25-45 s, mostly a wait KCL draws at random). moto's server runs in its own
process, kinesis-mock in its own (node), all on 127.0.0.1.

    python bench/kcl.py [--records N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.engines: kinesis-mock, as `make test` installs it

from streams.local.endpoint import EndpointProcess, local_session  # noqa: E402
from streams.mapping import EventSourceMapping, MappingSettings  # noqa: E402
from streams.mapping.function.interpreter import resolve_interpreter  # noqa: E402
from streams.mapping.function.pool import WorkerPool  # noqa: E402
from streams.mapping.function.spec import FunctionSpec  # noqa: E402
from streams.mapping.state import Observers  # noqa: E402
from streams.mapping.state.layout import MappingId  # noqa: E402
from streams.mapping.state.table import DynamoDBCheckpointStore  # noqa: E402
from streams.sources import KinesisStreamSource  # noqa: E402
from tests.engines.kinesis_mock import KinesisMock  # noqa: E402

REGION = "us-east-1"
SHARDS = 4
BATCH = 1000
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
#: (partition keys, bytes of data per record)
SHAPES = [(16, 100), (256, 1000)]
#: Not a timing: how long a run may take before the bench gives up.
PATIENCE = 300.0

HANDLER = """\
import os
import time

_journal = os.open(os.environ["BENCH_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def handle(record):
    record.json()
    os.write(_journal, b"%.6f\\n" % time.time())
"""
FUNCTION = """\
from bench_handler import handle
from streams import StreamProcessor

processor = StreamProcessor(handle)


def lambda_handler(event, context):
    return processor.process(event, context)
"""


@dataclass(frozen=True)
class Timing:
    records: int
    seconds: float  # first record handled to last
    startup_seconds: float  # start to first record handled

    @property
    def per_second(self) -> float:
        return self.records / self.seconds


def journal_times(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [
        float(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")
    ]


def wait_for_all(path: Path, records: int, started: float, alive: Callable[[], bool]) -> Timing:
    deadline = time.monotonic() + PATIENCE
    while True:
        times = journal_times(path)
        if len(times) >= records:
            return Timing(len(times), times[-1] - times[0], times[0] - started)
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{len(times)} of {records} records handled ({path})")
        time.sleep(0.2)


# --- the stream ---------------------------------------------------------------------------


def fill(kinesis: Any, stream: str, records: int, keys: int, size: int) -> None:
    """`records` records of `size` bytes over `keys` partition keys, 500 per PutRecords."""
    for start in range(0, records, 500):
        entries = []
        for n in range(start, min(start + 500, records)):
            body = json.dumps({"n": n, "pad": ""})
            data = json.dumps({"n": n, "pad": "x" * max(0, size - len(body))}).encode()
            entries.append({"PartitionKey": f"key-{n % keys}", "Data": data})
        while entries:
            result = kinesis.put_records(StreamName=stream, Records=entries)
            entries = [
                entry
                for entry, out in zip(entries, result["Records"], strict=True)
                if "ErrorCode" in out
            ]


# --- streams run's mapping ----------------------------------------------------------------


def run_mapping(
    directory: Path, moto: str, kinesis_endpoint: str, stream_arn: str, queue: str, *, records: int
) -> Timing:
    journal = directory / f"mapping-{uuid.uuid4().hex[:8]}.journal"
    session = local_session(REGION)
    name = f"Bench{uuid.uuid4().hex[:8]}"
    spec = FunctionSpec(
        name=name,
        code_uri=directory,
        handler="bench_function.lambda_handler",
        runtime=RUNTIME,
        timeout=60,
        environment={
            "AWS_ENDPOINT_URL": moto,
            "DEAD_LETTER_QUEUE_URL": queue,
            "BENCH_JOURNAL": str(journal),
        },
        region=REGION,
    )
    store = DynamoDBCheckpointStore(
        MappingId(name, stream_arn), client=session.client("dynamodb", endpoint_url=moto)
    )
    workers = WorkerPool(spec, resolve_interpreter(spec.runtime, spec.code_uri))
    engine = EventSourceMapping(
        MappingSettings.from_properties(
            {"StartingPosition": "TRIM_HORIZON", "BatchSize": BATCH}, "aws:kinesis"
        ),
        KinesisStreamSource(
            stream_arn, client=session.client("kinesis", endpoint_url=kinesis_endpoint)
        ),
        workers,
        function_arn=spec.arn,
        checkpoints=store,
        observer=Observers(store),
        session=session,
        endpoint_url=moto,
        function_timeout=spec.timeout,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with store.heartbeat(lambda lost: engine.stop()):
                engine.run()
        except BaseException as error:
            errors.append(error)

    started = time.time()
    store.acquire_lease()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        return wait_for_all(journal, records, started, thread.is_alive)
    finally:
        engine.stop()
        thread.join()
        store.release_lease()
        workers.close()
        if errors:
            raise errors[0]


# --- one KCL worker -----------------------------------------------------------------------


def run_kcl(
    directory: Path, moto: str, kinesis_endpoint: str, stream: str, queue: str, *, records: int
) -> Timing:
    journal = directory / f"kcl-{uuid.uuid4().hex[:8]}.journal"
    application = f"bench-{uuid.uuid4().hex[:8]}"
    properties = directory / f"{application}.properties"
    variables = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto,
        "AWS_ENDPOINT_URL_KINESIS": kinesis_endpoint,
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "kcl",
            "properties",
            "--local",
            "--stream",
            stream,
            "--application",
            application,
            "--handler",
            "bench_handler:handle",
            "--queue-url",
            queue,
            "--max-records",
            str(BATCH),
            "--output",
            str(properties),
        ],
        env=variables,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    environment.update(AWS_ENDPOINT_URL_SQS=moto, BENCH_JOURNAL=str(journal))
    with (directory / f"{application}.log").open("wb") as log:
        started = time.time()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "streams", "kcl", "run", "--properties", str(properties)],
            cwd=directory,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return wait_for_all(journal, records, started, lambda: daemon.poll() is None)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)  # the daemon and its workers
            daemon.wait()


# --- the bench ----------------------------------------------------------------------------


@contextmanager
def kinesis_mock() -> Iterator[str]:
    server = KinesisMock()
    try:
        yield server.endpoint
    finally:
        server.stop()


def bench(records: int) -> dict[str, Any]:
    results: dict[str, Any] = {"records": records, "shapes": []}
    with (
        EndpointProcess() as moto,
        kinesis_mock() as kinesis_endpoint,
        tempfile.TemporaryDirectory() as folder,
    ):
        directory = Path(folder)
        (directory / "bench_handler.py").write_text(HANDLER)
        (directory / "bench_function.py").write_text(FUNCTION)
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        os.environ.update(AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION)
        kinesis = boto3.client("kinesis", endpoint_url=kinesis_endpoint, region_name=REGION)
        queue = (
            local_session(REGION)
            .client("sqs", endpoint_url=moto.url)
            .create_queue(QueueName="bench-dead-letters")["QueueUrl"]
        )
        for keys, size in SHAPES:
            stream = f"bench-{keys}-{size}"
            kinesis.create_stream(StreamName=stream, ShardCount=SHARDS)
            while True:
                summary = kinesis.describe_stream_summary(StreamName=stream)
                if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                    break
                time.sleep(0.1)
            arn = summary["StreamDescriptionSummary"]["StreamARN"]
            fill(kinesis, stream, records, keys, size)
            args = (directory, moto.url, kinesis_endpoint)
            before = run_mapping(*args, arn, queue, records=records)
            kcl = run_kcl(*args, stream, queue, records=records)
            after = run_mapping(*args, arn, queue, records=records)
            mapping_seconds = (before.seconds + after.seconds) / 2
            results["shapes"].append(
                {
                    "keys": keys,
                    "bytes": size,
                    "mapping_records_per_second": round(records / mapping_seconds),
                    "kcl_records_per_second": round(kcl.per_second),
                    "kcl_vs_mapping": round(mapping_seconds / kcl.seconds, 2),
                    "mapping": [asdict(before), asdict(after)],
                    "kcl": asdict(kcl),
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=20_000, help="backlog per shape (default 20000)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    results = bench(args.records)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{args.records:,} records, {SHARDS} shards, batches of {BATCH}")
    for shape in results["shapes"]:
        before, after = shape["mapping"]
        kcl = shape["kcl"]
        print(f"{shape['keys']} keys, {shape['bytes']} bytes a record")
        print(
            f"  streams run's mapping (records/s)  {shape['mapping_records_per_second']:>8,}"
            f"  ({before['seconds']:.2f} s and {after['seconds']:.2f} s; "
            f"start-up {before['startup_seconds']:.1f} s)"
        )
        print(
            f"  one KCL worker (records/s)         {shape['kcl_records_per_second']:>8,}"
            f"  ({kcl['seconds']:.2f} s; start-up {kcl['startup_seconds']:.1f} s)"
        )
        print(f"  KCL / streams run                  {shape['kcl_vs_mapping']:>8}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
