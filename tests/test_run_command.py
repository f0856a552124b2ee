"""`streams run`: the command, in this process and as a process killed with SIGKILL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from streams.cli import main
from streams.cli.run import Summary
from streams.mapping import Invocation, InvokeResult
from streams.mapping.invoke import FunctionError
from streams.mapping.state.layout import DEFAULT_TABLE_NAME, LEASE_SK
from tests.run_functions import (
    TEMPLATE,
    Instrumented,
    deploy_instrumented,
    item_keys,
    pid_running,
    wait_until,
)
from tests.run_functions.functions import RAISED_VALUE


def _command(function: Instrumented, *options: str) -> list[str]:
    return [
        "run",
        "--template",
        str(TEMPLATE),
        "--stack-name",
        function.stack.stack_name,
        *options,
        "--parameter-overrides",
        *function.override_arguments(),
    ]


def test_killing_the_mapping_mid_invocation_loses_nothing_and_repeats_only_the_batch_in_flight(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    # GIVEN 50 items in batches of 10, and a function that sleeps in the middle of the third
    function = deploy_instrumented(
        moto_endpoint,
        unique_name,
        tmp_path,
        Behaviour="sleep-once",
        SleepKey=item_keys(1, start=25)[0],
        FunctionTimeout=60,
        BatchSize=10,
    )
    function.put_items(item_keys(50))
    command = [sys.executable, "-m", "streams", *_command(function)]
    # WHEN the mapping is killed while that invocation sleeps, then started again
    with subprocess.Popen(
        [*command, "-v"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as killed:
        try:
            wait_until(function.once_file.exists, "the function to be mid-invocation")
        finally:
            killed.send_signal(signal.SIGKILL)
    sleeper = function.once_pid()
    os.kill(sleeper, signal.SIGKILL)  # the orphaned worker would end by itself after Timeout
    wait_until(lambda: not pid_running(sleeper), "the orphaned worker to end")
    before = function.handled()
    restarted = subprocess.run(
        [*command, "--exit-when-idle", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # THEN every record was handled; the only ones handled twice are those the killed
    # invocation handled before it was killed; the dead mapping's lease was taken at once
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    handled = function.handled()
    assert sorted({record.pk for record in handled}) == item_keys(50)
    in_flight = before[-1].request_id
    repeated = {pk for pk, count in Counter(r.pk for r in handled).items() if count > 1}
    assert repeated == {record.pk for record in before if record.request_id == in_flight}
    assert repeated == set(item_keys(5, start=20))
    assert "its process is gone" in restarted.stdout
    assert "waiting, another mapping runs it" not in restarted.stdout


def test_the_mappings_own_lines_never_repeat_the_functions_error_message(
    moto_endpoint: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a function whose first invocation raises with an attribute value in its message
    function = deploy_instrumented(
        moto_endpoint, unique_name, tmp_path, Behaviour="raise-once", BatchSize=10
    )
    function.put_items(item_keys(3))

    code = main(_command(function, "--exit-when-idle", "0.5", "-v"))

    # THEN the function's own log has it (as Lambda's runtime logs it), the mapping's never
    out = capsys.readouterr().out
    assert code == 0
    with_value = [line for line in out.splitlines() if RAISED_VALUE in line]
    assert with_value, out  # the function did raise it
    assert [line for line in with_value if " [Recorder] " not in line] == []
    assert "records: function error ValueError (" in out
    assert "1 failed (last: function error ValueError)" in out


@pytest.mark.parametrize("verbose", [False, True])
def test_the_output_has_the_functions_logs_and_per_invocation_lines_only_with_verbose(
    moto_endpoint: str,
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    verbose: bool,
) -> None:
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path, BatchSize=10)
    function.put_items(item_keys(25))

    code = main(_command(function, "--exit-when-idle", "0.5", *(["-v"] if verbose else [])))

    out = capsys.readouterr().out
    assert code == 0
    assert f"streams: endpoint: {moto_endpoint} (from AWS_ENDPOINT_URL)" in out
    assert (
        f"function Recorder: functions.handle (python3.11, 10 s, 128 MB) from {TEMPLATE.parent}"
        in out
    )
    assert out.count("[Recorder] handled 10 records") == 2
    assert "[Recorder] handled 5 records" in out
    assert ("5 records: ok (" in out) is verbose
    assert "in all: 3 invocations, 25 records, 0 failed" in out


def test_bad_settings_are_refused_with_one_line_naming_the_property_and_a_non_zero_exit(
    moto_endpoint: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path, BatchSize=0)

    code = main(_command(function))

    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "streams: error: RecorderStream: event source mapping property BatchSize: "
        "must be between 1 and 10000, got 0\n"
    )


def test_a_mapping_whose_lease_was_taken_over_stops_with_exit_2(
    moto_endpoint: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path)
    state = boto3.client("dynamodb")

    def lease() -> dict[str, Any] | None:
        try:
            items = state.scan(TableName=DEFAULT_TABLE_NAME)["Items"]
        except state.exceptions.ResourceNotFoundException:
            return None
        leases = [i for i in items if i["sk"]["S"] == LEASE_SK and unique_name in i["pk"]["S"]]
        return leases[0] if leases else None

    def take_the_lease_over() -> None:
        wait_until(lambda: lease() is not None, "the mapping to take its lease")
        held = lease()
        assert held is not None
        # Another mapping takes the lease over (as after a missed heartbeat on a stalled host).
        state.update_item(
            TableName=DEFAULT_TABLE_NAME,
            Key={"pk": held["pk"], "sk": held["sk"]},
            UpdateExpression="SET #owner = :thief ADD version :one",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":thief": {"S": "another-mapping"}, ":one": {"N": "1"}},
        )
        function.put_items(item_keys(3))

    thief = threading.Thread(target=take_the_lease_over, daemon=True)
    thief.start()
    # The main thread: the command handles SIGTERM. Idle 30 s ends a mapping that missed it.
    code = main(_command(function, "--exit-when-idle", "30"))
    thief.join(60)

    assert code == 2
    err = capsys.readouterr().err
    assert "does not hold the lease; now held by another-mapping" in err
    assert (
        err.rstrip("\n").splitlines()[-1].endswith("stopped (one mapping per function and stream)")
    )


def test_without_a_local_endpoint_it_refuses_to_run_against_aws(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no `streams local up` recorded here

    code = main(["run", "--template", str(TEMPLATE)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("streams: error: no local endpoint: streams run feeds the function")
    assert err.count("\n") == 1


def test_quietly_a_summary_line_comes_at_most_once_per_interval_and_the_totals_at_the_end() -> None:
    now = [0.0]
    out = io.StringIO()
    summary = Summary(out, interval=10.0, clock=lambda: now[0])
    ok = Invocation("shard-1", 100, "ok", True, 0.01, InvokeResult())
    failed = Invocation(
        "shard-1",
        100,
        "function error E",
        False,
        0.01,
        InvokeResult(error=FunctionError("E", "boom")),
    )

    for at in (0.0, 4.0, 9.0):
        now[0] = at
        summary.invoked(ok)
    quiet_so_far = out.getvalue()
    now[0] = 10.0
    summary.invoked(failed)
    now[0] = 12.0
    summary.invoked(ok)
    summary.finish()

    lines = out.getvalue().splitlines()
    assert quiet_so_far == ""
    assert len(lines) == 2
    assert lines[0].endswith(
        "last 10 s: 4 invocations, 400 records, 1 failed (last: function error E)"
    )
    assert lines[1] == ("in all: 5 invocations, 500 records, 1 failed (last: function error E)")
