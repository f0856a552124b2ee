"""`streams write` against moto's server: in-process through `cli.main`, and as a real
subprocess for signals (SIGTERM, Ctrl-C) and `--resume`."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import boto3
import pytest

from streams.cli import main
from streams.demo.generate import generate_updates
from streams.local.endpoint import RecordedEndpoint, record_endpoint
from streams.writer.ingest import FailedFile, Line


def create_table(aws: boto3.Session, name: str, **overrides: Any) -> None:
    settings: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [{"AttributeName": "childId", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "childId", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
    aws.client("dynamodb").create_table(**(settings | overrides))


def table_items(aws: boto3.Session, name: str) -> dict[str, dict[str, Any]]:
    """Every item in the table, by childId, as plain Python values."""
    table = aws.resource("dynamodb").Table(name)
    items: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    while True:
        page = table.scan(**kwargs)
        items.update({item["childId"]: item for item in page["Items"]})
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def table(aws: boto3.Session, unique_name: str) -> str:
    create_table(aws, unique_name)
    return unique_name


def test_every_line_is_written_with_numbers_as_exact_decimals(
    aws: boto3.Session, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps({"childId": f"c-{i:03d}", "n": i}) for i in range(200)]
    lines.append('{"childId": "exact", "score": 0.1, "big": 123456789012345678901234567890}')
    path = write_lines(tmp_path / "updates.jsonl", lines)

    assert main(["write", str(path), "--table", table]) == 0

    stored = table_items(aws, table)
    assert len(stored) == 201
    assert stored["exact"]["score"] == Decimal("0.1")
    assert stored["exact"]["big"] == Decimal("123456789012345678901234567890")
    assert "wrote 201 of 201 items" in capsys.readouterr().out
    assert not (tmp_path / "updates.jsonl.failed.jsonl").exists()


def test_the_command_names_the_endpoint_it_talks_to(
    table: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["write", "--generate", "3", "--table", table]) == 0
    assert f"at {moto_endpoint} (AWS_ENDPOINT_URL" in capsys.readouterr().err


def test_the_endpoint_streams_local_up_recorded_is_used_with_its_own_credentials(
    *,
    table: str,
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As in a second terminal on a fresh machine: no AWS_ENDPOINT_URL, no credentials of its own.
    monkeypatch.chdir(tmp_path)
    record_endpoint(RecordedEndpoint(moto_endpoint, "us-east-1", None, None, os.getpid()))
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert main(["write", "--generate", "3", "--table", table]) == 0
    assert f"at {moto_endpoint} (.streams/local.json" in capsys.readouterr().err
    monkeypatch.undo()  # the test's own endpoint and credentials, to look at the table
    (child,) = table_items(boto3.Session(region_name="us-east-1"), table).values()
    assert child["version"] == 3  # three updates of one child reached the recorded endpoint


def test_a_bad_line_is_reported_with_its_number_and_skipped_and_the_run_fails(
    aws: boto3.Session, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(
        tmp_path / "updates.jsonl",
        [
            '{"childId": "c-1"}',
            "",
            '{"childId": "c-3", "name": "unterminated}',
            "[1, 2]",
            '{"childId": "c-5", "ratio": NaN}',
            '{"childId": ""}',
            '{"childId": "c-7"}',
        ],
    )

    assert main(["write", str(path), "--table", table]) == 1

    err = capsys.readouterr().err
    assert "line 3: malformed JSON (Unterminated string" in err
    assert "line 4: not a JSON object (one item per line), but list; skipped" in err
    assert "line 5: malformed JSON (NaN is not a number DynamoDB can store)" in err
    assert "line 6: 'childId', the partition key" in err and "is empty" in err
    assert table_items(aws, table).keys() == {"c-1", "c-7"}
    failed = [
        json.loads(line)
        for line in (tmp_path / "updates.jsonl.failed.jsonl").read_text().splitlines()
    ]
    assert [f["line"] for f in failed] == [3, 4, 5, 6]
    assert failed[0]["text"] == '{"childId": "c-3", "name": "unterminated}'
    assert failed[3]["item"] == {"childId": ""}


def test_a_line_nested_too_deeply_is_a_bad_line_and_the_run_goes_on(
    aws: boto3.Session, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    too_deep_to_parse = '{"childId": "c-2", "a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    deeper_than_dynamodb = json.dumps({"childId": "c-3", "a": _nested(40)})
    path = write_lines(
        tmp_path / "updates.jsonl",
        ['{"childId": "c-1"}', too_deep_to_parse, deeper_than_dynamodb, '{"childId": "c-4"}'],
    )

    assert main(["write", str(path), "--table", table]) == 1

    err = capsys.readouterr().err
    assert "line 2: nested too deeply to read" in err
    assert "line 3: item childId='c-3': 'a'" in err and "deeper than DynamoDB's 32 levels" in err
    assert table_items(aws, table).keys() == {"c-1", "c-4"}
    failed = [
        json.loads(line)
        for line in (tmp_path / "updates.jsonl.failed.jsonl").read_text().splitlines()
    ]
    assert [f["line"] for f in failed] == [2, 3]


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"m": value}
    return value


@pytest.mark.parametrize(
    "case",
    [
        (["--failed", "updates.jsonl"], "--failed and the input are the same file"),
        (["--state", "updates.jsonl"], "--state and the input are the same file"),
        (["--failed", "x.json", "--state", "x.json"], "--state and --failed are the same file"),
        (
            ["--failed", "updates.jsonl.progress.json"],
            "the progress file and --failed are the same file",
        ),
    ],
    ids=["failed-is-input", "state-is-input", "state-is-failed", "failed-is-default-state"],
)
def test_the_input_failed_and_progress_files_must_be_three_files(
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[list[str], str],
) -> None:
    flags, message = case
    monkeypatch.chdir(tmp_path)
    path = write_lines(tmp_path / "updates.jsonl", ['{"childId": "c-1"}'])

    assert main(["write", "updates.jsonl", "--table", "t", *flags]) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("streams: error: ") and message in line
    assert path.read_text() == '{"childId": "c-1"}\n'


def test_the_failed_file_is_readable_by_its_owner_only_also_when_appended_to(
    table: str, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "updates.jsonl", ['{"childId": ""}'])
    failed = tmp_path / "updates.jsonl.failed.jsonl"

    assert main(["write", str(path), "--table", table]) == 1
    assert stat.S_IMODE(failed.stat().st_mode) == 0o600

    failed.chmod(0o644)  # an earlier run's file, or someone's chmod: appending tightens it
    with FailedFile(failed) as again:
        again.write(Line(2, 0, 0, "{", None, "malformed JSON"), "malformed JSON")
    assert stat.S_IMODE(failed.stat().st_mode) == 0o600
    assert [json.loads(line)["line"] for line in failed.read_text().splitlines()] == [1, 2]


def test_an_item_dynamodb_rejects_goes_to_the_failed_file_and_its_neighbours_are_written(
    aws: boto3.Session, unique_name: str, tmp_path: Path
) -> None:
    create_table(
        aws,
        unique_name,
        AttributeDefinitions=[
            {"AttributeName": "childId", "AttributeType": "S"},
            {"AttributeName": "region", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-region",
                "KeySchema": [{"AttributeName": "region", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    )
    lines = [json.dumps({"childId": f"c-{i}", "region": "north"}) for i in range(40)]
    lines[17] = '{"childId": "c-17", "region": "", "score": 1.50}'
    path = write_lines(tmp_path / "updates.jsonl", lines)
    failed_path = tmp_path / "rejected.jsonl"

    assert main(["write", str(path), "--table", unique_name, "--failed", str(failed_path)]) == 1

    (failed,) = [json.loads(line) for line in failed_path.read_text().splitlines()]
    assert failed["line"] == 18 and "ValidationException" in failed["reason"]
    assert '"score": 1.50}' in failed_path.read_text()  # the line as it was read
    assert len(table_items(aws, unique_name)) == 39


def test_a_missing_table_is_one_clear_line_and_a_non_zero_exit(
    moto_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "updates.jsonl", ['{"childId": "c-1"}'])
    assert main(["write", str(path), "--table", "no-such-table"]) == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert error.startswith("streams: error: table 'no-such-table' does not exist at")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-", "--resume"], "--resume and --state need an input file: stdin cannot be read"),
        (["--generate", "5", "--resume"], "generated updates cannot be read again"),
        (["missing.jsonl"], "no such file: missing.jsonl"),
        (["-", "--poison-rate", "0.1"], "--poison-rate goes with --generate N"),
        (["--generate", "5", "--poison-rate", "2"], "--poison-rate is a fraction from 0 to 1"),
        (["--generate", "5", "--linger", "-1"], "--linger is seconds, 0 or more, not -1"),
    ],
    ids=[
        "resume-stdin",
        "resume-generated",
        "no-file",
        "poison-without-generate",
        "poison-rate",
        "negative-linger",
    ],
)
def test_flags_that_cannot_work_are_refused_clearly(
    moto_endpoint: str, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["write", *args, "--table", "t"]) == 2
    assert message in capsys.readouterr().err


def saved_progress(path: Path, state: Path, into: str, line: int, **changes: Any) -> None:
    """A progress file as `streams write` leaves it after `line` lines (docs/writer.md)."""
    offset = sum(len(text) for text in path.read_bytes().splitlines(keepends=True)[:line])
    saved = {"version": 1, "input": str(path.resolve()), "table": into}
    saved |= {"line": line, "offset": offset} | changes
    state.write_text(json.dumps(saved) + "\n", encoding="utf-8")


def test_resume_with_state_continues_after_the_line_that_file_names(
    aws: boto3.Session, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "updates.jsonl", [f'{{"childId": "c-{i}"}}' for i in range(10)])
    state = tmp_path / "elsewhere.json"
    saved_progress(path, state, table, line=3)

    command = ["write", str(path), "--table", table, "--resume", "--state", str(state), "--json"]
    assert main(command) == 0

    assert sorted(table_items(aws, table)) == [f"c-{i}" for i in range(3, 10)]
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["first_line"] == 4


@pytest.mark.parametrize(
    "case",
    [
        ({"input": "/elsewhere/other.jsonl"}, "is for /elsewhere/other.jsonl into table"),
        ({"table": "another-table"}, "into table 'another-table', not"),
        ({"offset": 10_000}, "is shorter than when"),
    ],
    ids=["another-file", "another-table", "input-shrank"],
)
def test_resume_refuses_a_progress_file_of_another_file_or_table_or_an_input_that_shrank(
    aws: boto3.Session,
    table: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[dict[str, Any], str],
) -> None:
    changes, message = case
    path = write_lines(tmp_path / "updates.jsonl", [f'{{"childId": "c-{i}"}}' for i in range(10)])
    saved_progress(path, tmp_path / "updates.jsonl.progress.json", table, line=3, **changes)

    assert main(["write", str(path), "--table", table, "--resume"]) == 2

    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("streams: error: ")
    assert message in line
    assert table_items(aws, table) == {}


def test_stdin_is_read_with_a_dash(
    aws: boto3.Session, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b'{"childId": "c-1"}\n{"childId": "c-2"}\n'))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["write", "-", "--table", table]) == 0
    assert table_items(aws, table).keys() == {"c-1", "c-2"}


def test_generated_updates_end_with_each_child_at_its_last_version(
    aws: boto3.Session, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--generate", "600", "--children", "50", "--poison-rate", "0.2", "--seed", "7"]
    assert main(["write", *args, "--table", table, "--json"]) == 0

    summary = json.loads(capsys.readouterr().out)  # every update sent: the stream sees each
    assert (summary["items"], summary["written"], summary["replaced"]) == (600, 600, 0)
    last = {u["childId"]: u for u in generate_updates(600, children=50, poison_rate=0.2, seed=7)}
    stored = table_items(aws, table)
    assert {k: v["version"] for k, v in stored.items()} == {
        k: v["version"] for k, v in last.items()
    }


def test_with_coalesce_queued_updates_of_a_key_are_replaced_and_the_table_ends_the_same(
    aws: boto3.Session, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--generate", "600", "--children", "5", "--seed", "7", "--senders", "1"]
    assert main(["write", *args, "--table", table, "--coalesce", "--json"]) == 0

    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] + summary["replaced"] == 600
    assert summary["replaced"] > 0  # 5 children: their updates queue up behind each other
    last = {u["childId"]: u for u in generate_updates(600, children=5, seed=7)}
    stored = table_items(aws, table)
    assert {k: v["version"] for k, v in stored.items()} == {
        k: v["version"] for k, v in last.items()
    }


def test_the_generator_makes_a_poison_rate_fraction_of_updates_malformed() -> None:
    updates = list(generate_updates(10_000, poison_rate=0.1, seed=1))
    malformed = [u for u in updates if u["status"] not in ("nice", "naughty") or "address" not in u]
    assert 900 < len(malformed) < 1100
    assert len({u["childId"] for u in updates}) < len(updates) / 3  # several updates per child
    assert updates == list(generate_updates(10_000, poison_rate=0.1, seed=1))


def test_progress_is_a_bar_on_a_terminal(
    table: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["write", "--generate", "100", "--table", table]) == 0
    assert f"writing to {table}" in terminal.getvalue()
    assert "written · " in terminal.getvalue() and "throttled" in terminal.getvalue()


def test_progress_is_plain_text_when_not_on_a_terminal(
    table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["write", "--generate", "100", "--table", table]) == 0
    captured = capsys.readouterr()
    assert "\x1b[" not in captured.err + captured.out


# -- interrupted, then resumed: a real process, real signals ------------------------------------


class StreamLines:
    """Reads a process's stream on a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        while text not in self._queue.get(timeout=timeout):
            pass

    def text(self) -> str:
        self._thread.join()
        return "".join(self.lines)


def streams_write(path: Path, table: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streams", "write", str(path), "--table", table, "--json", *extra]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_write_flushes_and_resume_writes_the_rest(
    aws: boto3.Session, table: str, tmp_path: Path, signum: signal.Signals
) -> None:
    total = 3000
    path = write_lines(
        tmp_path / "updates.jsonl",
        [json.dumps({"childId": f"c-{i:05d}", "n": i}) for i in range(total)],
    )
    env = os.environ | {"PYTHONUNBUFFERED": "1"}  # AWS_ENDPOINT_URL: the test's moto server
    with subprocess.Popen(
        streams_write(path, table, "--max-rate", "400"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as first:
        assert first.stdout is not None and first.stderr is not None
        err = StreamLines(first.stderr)
        err.wait_for(" written (")  # a progress line: it is under way
        first.send_signal(signum)
        out = first.stdout.read()
        assert first.wait(timeout=60) == 128 + signum
        err_text = err.text()

    summary = json.loads(out)
    done = summary["last_line_done"]
    assert summary["interrupted_by"] == signum.name and 0 < done < total
    assert f"run again with --resume to continue from line {done + 1:,}" in err_text
    assert json.loads((tmp_path / "updates.jsonl.progress.json").read_text())["line"] == done
    assert len(table_items(aws, table)) == done  # everything read was flushed

    second = subprocess.run(
        streams_write(path, table, "--resume"),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    resumed = json.loads(second.stdout)
    assert (resumed["first_line"], resumed["items"]) == (done + 1, total - done)
    stored = table_items(aws, table)
    assert {k: int(v["n"]) for k, v in stored.items()} == {f"c-{i:05d}": i for i in range(total)}


def test_a_second_signal_stops_at_once(table: str, tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "updates.jsonl", [json.dumps({"childId": f"c-{i}"}) for i in range(3000)]
    )
    with subprocess.Popen(
        streams_write(path, table, "--max-rate", "200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    ) as process:
        assert process.stderr is not None
        err = StreamLines(process.stderr)
        err.wait_for(" written (")
        process.send_signal(signal.SIGTERM)
        err.wait_for("a second signal stops at once")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        assert "stopped at once by a second SIGTERM" in err.text()
