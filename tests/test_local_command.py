"""`streams local up` and `streams local create` as a user runs them."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from streams.cli import main
from streams.local.endpoint import STATE_FILE, RecordedEndpoint, record_endpoint

TEMPLATES = Path(__file__).parent / "templates"
SAM_APP = TEMPLATES / "sam-app.yaml"
# A guard against a hung child, not a measurement: the server is normally up in seconds.
STARTUP_LIMIT_SECONDS = 120


class Running:
    """`streams local up` in a child process, its stdout read line by line."""

    def __init__(self, *arguments: str, cwd: Path) -> None:
        environment = {key: value for key, value in os.environ.items() if key != "AWS_ENDPOINT_URL"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", "local", "up", *arguments],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, marker: str) -> list[str]:
        seen: list[str] = []
        while True:
            line = self.lines.get(timeout=STARTUP_LIMIT_SECONDS)
            if line is None:
                assert self.process.stderr is not None
                raise AssertionError(f"exited: {seen} {self.process.stderr.read()}")
            seen.append(line)
            if marker in line:
                return seen

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=STARTUP_LIMIT_SECONDS)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def running_up(in_tmp: Path) -> Iterator[Running]:
    running = Running("--port", "0", "--template", str(SAM_APP), cwd=in_tmp)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        for stream in (running.process.stdout, running.process.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_serves_the_templates_resources_records_its_endpoint_and_stops_cleanly(
    running_up: Running, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    # GIVEN `streams local up` serving
    lines = running_up.read_until("serving until Ctrl-C")
    recorded = json.loads((in_tmp / STATE_FILE).read_text())
    endpoint = recorded["endpoint_url"]

    # THEN it said where it listens and what it made, and the resources are there
    assert lines[0].startswith(f"streams: local endpoint {endpoint} (moto ")
    assert endpoint.startswith("http://127.0.0.1:")
    assert any(line.startswith("stack streams-local: created from") for line in lines)
    (table_line,) = [line for line in lines if line.strip().startswith("ChangesTableName")]
    table_name = table_line.split()[-1]
    tables = boto3.client("dynamodb", endpoint_url=endpoint).list_tables()["TableNames"]
    assert table_name in tables
    assert recorded["stack_name"] == "streams-local" and recorded["pid"] == running_up.process.pid

    # AND another command in the same directory finds it without flags
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert main(["local", "create", "--template", str(SAM_APP)]) == 0

    # WHEN it is stopped, THEN it exits 0 and removes its record
    assert running_up.stop(signum) == 0
    assert not (in_tmp / STATE_FILE).exists()


def test_create_reports_the_endpoint_and_changes_nothing_the_second_time(
    in_tmp: Path, moto_endpoint: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["local", "create", "--template", str(SAM_APP), "--stack-name", unique_name]

    assert main(arguments) == 0
    first = capsys.readouterr().out
    assert main(arguments) == 0
    second = capsys.readouterr().out

    assert first.splitlines()[0] == (
        f"streams: endpoint: {moto_endpoint} (from AWS_ENDPOINT_URL), region us-east-1"
    )
    assert f"stack {unique_name}: created from {SAM_APP}" in first
    assert f"stack {unique_name}: unchanged from {SAM_APP}" in second
    assert "  AlertsByEmail, ChangesErrors: moto's CloudFormation cannot create this type" in first


def test_create_json_is_one_document_on_stdout_with_messages_on_stderr(
    in_tmp: Path, moto_endpoint: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [
            "local",
            "create",
            "--template",
            str(SAM_APP),
            "--stack-name",
            unique_name,
            "--parameter-overrides",
            "Stage=prod",
            "ChangesBatchSize=9",
            "--json",
        ]
    )
    captured = capsys.readouterr()

    document = json.loads(captured.out)
    assert status == 0
    assert captured.err.startswith(f"streams: endpoint: {moto_endpoint}")
    assert document["endpoint_url"] == moto_endpoint
    assert document["outputs"]["ChangesTableName"].startswith(f"{unique_name}-Changes-")
    changes = document["functions"]["ChangesFunction"]
    assert changes["environment"]["STAGE"] == "prod"
    assert changes["event_sources"][0]["properties"]["BatchSize"] == 9


def test_create_without_a_local_endpoint_is_one_line_and_exit_2(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)

    status = main(["local", "create", "--template", str(SAM_APP)])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == (
        "streams: error: no local endpoint: start `streams local up` in this directory, "
        "or set AWS_ENDPOINT_URL to one\n"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--template", "missing.yaml"], "streams: error: template not found: "),
        (["--parameter-overrides", "Stage"], "streams: error: bad --parameter-overrides item"),
    ],
)
def test_create_user_errors_are_one_line_without_a_traceback(
    in_tmp: Path,
    moto_endpoint: str,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    status = main(["local", "create", "--template", str(SAM_APP), *arguments])

    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith(message)
    assert captured.err.count("\n") == 1


def test_up_on_a_taken_port_is_a_user_error(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["local", "up", "--port", str(port), "--template", str(SAM_APP)])

    assert status == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (in_tmp / STATE_FILE).exists()


def test_a_second_up_in_the_same_directory_is_refused(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_endpoint(
        RecordedEndpoint("http://127.0.0.1:4566", "us-east-1", "streams-local", None, os.getpid())
    )

    status = main(["local", "up", "--port", "0", "--template", str(SAM_APP)])

    assert status == 2
    assert capsys.readouterr().err == (
        "streams: error: `streams local up` already serves http://127.0.0.1:4566 for this "
        f"directory (pid {os.getpid()}): use it, or stop it first\n"
    )


def test_local_without_a_command_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local"]) == 2
    help_text = capsys.readouterr().out
    assert "up" in help_text and "create" in help_text
