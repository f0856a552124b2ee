"""GIVEN helpers for `streams run`'s tests: the instrumented function's template, its records,
a mapping running in a thread, and waiting for a condition.

The function itself is `functions.py` here (the template's `CodeUri` is this directory).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.local.endpoint import local_session
from streams.local.run import LocalMapping
from streams.local.stack import DeployedStack, deploy_template

HERE = Path(__file__).parent
TEMPLATE = HERE / "stream-function.yaml"
KINESIS_TEMPLATE = HERE / "kinesis-function.yaml"
#: template.yaml's table, queues and HydrateFunction, with a ProcessorFunction that always fails.
HYDRATE_TEMPLATE = HERE / "hydrate-template.yaml"


@dataclass(frozen=True)
class RecordedRecord:
    """One line the function wrote for a record it handled."""

    pk: str
    sequence_number: str
    pid: int
    request_id: str
    endpoint: str | None
    access_key_id: str | None


@dataclass(frozen=True)
class Instrumented:
    """A deployed stream-function stack and the files its function writes."""

    stack: DeployedStack
    record_file: Path
    once_file: Path
    parameters: dict[str, str]

    @property
    def table(self) -> str:
        return self.stack.outputs["TableName"]

    def put_items(self, keys: list[str]) -> None:
        client = local_session(self.stack.region).client(
            "dynamodb", endpoint_url=self.stack.endpoint_url
        )
        for key in keys:
            client.put_item(TableName=self.table, Item={"pk": {"S": key}})

    def handled(self) -> list[RecordedRecord]:
        if not self.record_file.exists():
            return []
        return [
            RecordedRecord(
                line["pk"],
                line["sequenceNumber"],
                int(line["pid"]),
                line["requestId"],
                line["endpoint"],
                line["accessKeyId"],
            )
            for line in map(json.loads, self.record_file.read_text().splitlines())
        ]

    def once_pid(self) -> int:
        """The pid of the worker that misbehaved (it wrote the once-file)."""
        return int(self.once_file.read_text())

    def override_arguments(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.parameters.items()]


def deploy_instrumented(
    endpoint_url: str, stack_name: str, directory: Path, **parameters: Any
) -> Instrumented:
    """The template with `parameters` (Behaviour, FunctionTimeout, BatchSize, SleepKey, ...)."""
    record_file, once_file = directory / "records.jsonl", directory / "once"
    overrides = {
        "RecordFile": str(record_file),
        "OnceFile": str(once_file),
        **{key: str(value) for key, value in parameters.items()},
    }
    stack = deploy_template(
        TEMPLATE, endpoint_url=endpoint_url, stack_name=stack_name, parameter_overrides=overrides
    )
    return Instrumented(stack, record_file, once_file, overrides)


def item_keys(count: int, start: int = 0) -> list[str]:
    return [f"item-{number:03d}" for number in range(start, start + count)]


# How long a test waits for something that should happen within a second or two.
PATIENCE_SECONDS = 60.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition` (a liveness bound, not a timing assertion)."""
    give_up = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"still waiting after {PATIENCE_SECONDS:.0f} s for {what}")
        time.sleep(0.05)


class InBackground:
    """`mapping.run()` in a thread while entered; `stop()` stops and joins it (and raises what
    `run` raised), as leaving does."""

    def __init__(self, mapping: LocalMapping) -> None:
        self._mapping = mapping
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="test-local-mapping")

    def _run(self) -> None:
        try:
            self._mapping.run()
        except BaseException as error:
            self._errors.append(error)

    def __enter__(self) -> InBackground:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._mapping.stop()
        self._thread.join()
        if self._errors:
            raise self._errors.pop()


def pid_running(pid: int) -> bool:
    """True while the process runs (ended but not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
