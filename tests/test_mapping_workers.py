"""Function workers: the function runs in warm child processes, and a crash, an exit or a hang
costs one invocation, never the mapping."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from streams.mapping.function import pool
from streams.mapping.function.child import MEMORY_ALLOWANCE_MB
from streams.mapping.function.emf import EmfMetric
from streams.mapping.function.interpreter import Interpreter, resolve_interpreter
from streams.mapping.function.pool import Worker, WorkerPool
from streams.mapping.function.spec import FunctionSpec
from streams.mapping.invoke import NotInvoked
from tests.factories import dynamodb_record

HANDLERS = Path(__file__).parent / "handlers"
REPOSITORY = Path(__file__).parent.parent
OURS = f"python{sys.version_info.major}.{sys.version_info.minor}"
INTERPRETER = Interpreter(sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}")


def function(**overrides: Any) -> FunctionSpec:
    settings: dict[str, Any] = {
        "name": "worker-test",
        "code_uri": HANDLERS,
        "handler": "functions.handle",
        "runtime": OURS,
        "timeout": 5,
        **overrides,
    }
    return FunctionSpec(**settings)


@pytest.fixture
def worker() -> Iterator[Worker]:
    worker = Worker(function(), INTERPRETER)
    yield worker
    worker.close()


def pid_exists(pid: int) -> bool:
    """True while the process runs (ended but not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


# --- invocations -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"batchItemFailures": []}, None, "text", [1, 2]])
def test_the_handlers_return_value_is_the_invocations_payload(worker: Worker, value: Any) -> None:
    result = worker.invoke({"action": "echo", "value": value})

    assert result.error is None
    assert result.payload == value
    assert result.duration >= 0


def test_a_raising_handler_is_an_unhandled_function_error_with_its_stack_trace(
    worker: Worker,
) -> None:
    result = worker.invoke({"action": "raise", "value": 7})

    assert result.error is not None
    assert result.error.kind == "Unhandled"
    assert result.error.error_type == "ValueError"
    assert result.error.message == "cannot handle 7"
    assert any("functions.py" in frame for frame in result.error.stack_trace)
    assert result.error.payload()["errorType"] == "ValueError"
    # The process survives an exception: the next invocation runs warm.
    assert worker.invoke({"action": "count"}).payload["invocations"] == 2


def test_os_exit_costs_one_invocation_and_the_next_runs_on_a_fresh_process(
    worker: Worker,
) -> None:
    before = worker.invoke({"action": "count"}).payload

    crashed = worker.invoke({"action": "exit"})
    after = worker.invoke({"action": "count"}).payload

    assert crashed.error is not None
    assert crashed.error.kind == "crash"
    assert crashed.error.error_type == "Runtime.ExitError"
    assert crashed.error.message.endswith("Runtime exited with error: exit status 1")
    assert after["pid"] != before["pid"]
    assert after["invocations"] == 1  # a cold start: module state begins again


@pytest.mark.parametrize(
    ("event", "ending"),
    [
        ({"action": "sys-exit", "value": 3}, "exit status 3"),
        ({"action": "sys-exit", "value": 0}, "Runtime exited without providing a reason"),
        ({"action": "signal", "value": "SIGSEGV"}, "signal: segmentation fault"),
        ({"action": "signal", "value": "SIGKILL"}, "signal: killed"),
    ],
)
def test_exits_and_fatal_signals_are_crashes_of_one_invocation(
    worker: Worker, event: dict[str, Any], ending: str
) -> None:
    result = worker.invoke(event)

    assert result.error is not None
    assert (result.error.kind, result.error.error_type) == ("crash", "Runtime.ExitError")
    assert result.error.message.endswith(ending)
    assert worker.invoke({"action": "echo", "value": 1}).payload == 1


def test_a_hanging_handler_is_killed_at_its_timeout_and_the_next_invocation_works() -> None:
    worker = Worker(function(timeout=1), INTERPRETER)
    try:
        hung_pid = worker.invoke({"action": "count"}).payload["pid"]
        hung = worker.invoke({"action": "hang"})
        hung_pid_gone = not pid_exists(hung_pid)
        after = worker.invoke({"action": "count"})
    finally:
        worker.close()

    assert hung.error is not None
    assert hung.error.kind == "timeout"
    assert hung.error.error_type == "Sandbox.Timedout"
    assert hung.error.message.endswith("Task timed out after 1.00 seconds")
    assert hung.duration == 1.0
    assert hung_pid_gone
    assert after.error is None
    assert after.payload["invocations"] == 1


def test_the_context_describes_the_function_and_its_remaining_time_counts_down(
    worker: Worker,
) -> None:
    result = worker.invoke({"action": "context"})
    context = result.payload

    assert 0 < context["second"] < context["first"] <= 5000
    assert context["aws_request_id"] == result.request_id
    assert context["function_name"] == "worker-test"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == (
        "arn:aws:lambda:us-east-1:123456789012:function:worker-test"
    )
    assert context["memory_limit_in_mb"] == "128"  # a string, as Lambda's runtime gives it
    assert context["log_group_name"] == "/aws/lambda/worker-test"
    assert "[$LATEST]" in context["log_stream_name"]
    assert worker.invoke({"action": "context"}).payload["aws_request_id"] != result.request_id


def test_the_function_gets_its_variables_lambdas_and_the_endpoint_but_not_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("STREAMS_TEST_NOT_FOR_THE_FUNCTION", "ours")
    worker = Worker(
        function(environment={"DELIVERY_TABLE_NAME": "deliveries"}, memory_size=256), INTERPRETER
    )
    try:
        payload = worker.invoke({"action": "environment"}).payload
    finally:
        worker.close()
    environment = payload["environment"]

    assert environment["DELIVERY_TABLE_NAME"] == "deliveries"
    assert environment["AWS_LAMBDA_FUNCTION_NAME"] == "worker-test"
    assert environment["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert environment["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert environment["AWS_REGION"] == environment["AWS_DEFAULT_REGION"] == "us-east-1"
    assert environment["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert environment["AWS_ACCESS_KEY_ID"] == "testing"
    assert "STREAMS_TEST_NOT_FOR_THE_FUNCTION" not in environment
    assert Path(payload["cwd"]) == Path(payload["path0"]) == HANDLERS


def test_a_relative_codeuri_is_taken_from_the_current_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(HANDLERS.parent)
    worker = Worker(function(code_uri=Path(HANDLERS.name)), INTERPRETER)
    try:
        result = worker.invoke({"action": "echo", "value": "found"})
    finally:
        worker.close()

    assert result.payload == "found"


def test_a_worker_stays_warm_between_invocations(worker: Worker) -> None:
    first = worker.invoke({"action": "count"}).payload
    second = worker.invoke({"action": "count"}).payload

    assert second == {"invocations": first["invocations"] + 1, "pid": first["pid"]}


def test_the_functions_output_is_forwarded_and_its_emf_metrics_kept(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streams.mapping.function")

    result = worker.invoke({"action": "log", "value": "hello"})

    lines = [r.getMessage() for r in caplog.records if r.name == "streams.mapping.function"]
    assert "[worker-test] to stdout hello" in lines
    assert "[worker-test] to stderr hello" in lines
    assert any('"_aws"' in line for line in lines)  # the EMF line is logged too
    assert result.metrics == (
        EmfMetric(
            namespace="StreamProcessor",
            name="RecordsParked",
            unit="Count",
            values=(2.0,),
            dimensions={"reason": "poison", "service": "tests"},
        ),
    )


def test_large_events_outputs_and_payloads_pass_through_the_pipes(worker: Worker) -> None:
    value = "v" * 3_000_000  # far beyond a pipe's 64 KiB buffer, both ways

    result = worker.invoke({"action": "big", "lines": 2000, "value": value})

    assert result.payload == value


def test_a_result_that_is_not_json_is_a_marshal_error(worker: Worker) -> None:
    result = worker.invoke({"action": "unserializable"})

    assert result.error is not None
    assert (result.error.kind, result.error.error_type) == ("Unhandled", "Runtime.MarshalError")


def test_a_module_that_cannot_be_imported_fails_the_invocation_and_init_runs_again() -> None:
    worker = Worker(function(handler="missing_module.handle"), INTERPRETER)
    try:
        first = worker.invoke({})
        second = worker.invoke({})
    finally:
        worker.close()

    for result in (first, second):
        assert result.error is not None
        assert result.error.kind == "Unhandled"
        assert result.error.error_type == "Runtime.ImportModuleError"
        assert "Unable to import module 'missing_module'" in result.error.message


def test_a_function_whose_init_passes_the_start_up_limit_times_out_and_init_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lambda gives a function's init 10 s; shortened here so the test does not wait for it.
    assert pool.INIT_TIMEOUT_SECONDS == 10.0
    monkeypatch.setattr(pool, "INIT_TIMEOUT_SECONDS", 0.5)
    (tmp_path / "slow_init.py").write_text(
        "import time\ntime.sleep(60)\n\ndef handle(event, context):\n    return None\n"
    )
    worker = Worker(
        function(code_uri=tmp_path, handler="slow_init.handle", timeout=60), INTERPRETER
    )
    try:
        first = worker.invoke({})
        second = worker.invoke({})
    finally:
        worker.close()

    for result in (first, second):
        assert result.error is not None
        assert result.error.kind == "timeout"
        assert "Init timed out after 0.50 seconds" in result.error.message


def test_memory_past_memory_size_and_its_allowance_is_a_memory_error(worker: Worker) -> None:
    fits = worker.invoke({"action": "allocate", "value": 64})
    too_much = worker.invoke({"action": "allocate", "value": 128 + MEMORY_ALLOWANCE_MB + 64})

    assert fits.payload == 64 * 1024 * 1024
    assert too_much.error is not None
    assert too_much.error.error_type == "MemoryError"


def test_workers_of_a_mapping_killed_with_sigkill_do_not_outlive_their_invocation() -> None:
    script = f"""
import logging, sys
from pathlib import Path
from streams.mapping.function.interpreter import Interpreter
from streams.mapping.function.pool import Worker
from streams.mapping.function.spec import FunctionSpec
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
spec = FunctionSpec("orphans", Path({str(HANDLERS)!r}), "functions.handle",
                    runtime={OURS!r}, timeout=1)
interpreter = Interpreter(sys.executable, {INTERPRETER.version!r})
idle, busy = Worker(spec, interpreter), Worker(spec, interpreter)
for worker in (idle, busy):
    print(worker.invoke({{"action": "count"}}).payload["pid"], flush=True)
busy.invoke({{"action": "hang"}})
"""
    mapping = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert mapping.stdout is not None
    with mapping.stdout:
        pids = [int(mapping.stdout.readline()) for _ in range(2)]
        assert mapping.stdout.readline() == "[orphans] hanging\n"
        mapping.kill()
        mapping.wait()

    # The idle worker sees its pipe close; the busy one ends 2 s after its deadline.
    give_up = time.monotonic() + 30
    while any(pid_exists(pid) for pid in pids) and time.monotonic() < give_up:
        time.sleep(0.1)
    assert not [pid for pid in pids if pid_exists(pid)]


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"timeout": 0}, "Timeout 0"),
        ({"timeout": 901}, "Timeout 901"),
        ({"memory_size": 64}, "MemorySize 64"),
        ({"handler": "handle"}, "Handler 'handle'"),
        ({"runtime": "nodejs20.x"}, "Runtime 'nodejs20.x'"),
        ({"environment": {"AWS_REGION": "eu-west-1"}}, "AWS_REGION reserved by Lambda"),
        ({"code_uri": HANDLERS / "absent"}, "CodeUri"),
    ],
)
def test_settings_lambda_would_refuse_are_refused_naming_the_property(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        function(**overrides)


def test_our_python_runs_a_function_of_its_own_runtime_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert resolve_interpreter(OURS, HANDLERS) == INTERPRETER
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_without_the_runtimes_python_the_function_runs_on_ours_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chosen = resolve_interpreter(
        "python3.99", HANDLERS, search_path=str(tmp_path), pyenv_root=tmp_path
    )

    assert chosen == INTERPRETER
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("Runtime python3.99: running the function with Python")
    assert "no python3.99" in warning


def other_python() -> tuple[str, Path]:
    """A pyenv Python of another minor version than ours (version, pyenv root), or skip."""
    root = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    ours = INTERPRETER.version
    for python in sorted(root.glob("versions/3.*/bin/python3.*")):
        version = python.name.removeprefix("python")
        if version != ours and python.parent.parent.name.startswith(f"{version}."):
            return version, root
    pytest.skip(f"LOUD SKIP: no pyenv Python other than {ours} under {root}")


def test_a_matching_python_without_the_dependencies_is_passed_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version, root = other_python()

    chosen = resolve_interpreter(
        f"python{version}", HANDLERS, search_path=str(tmp_path), pyenv_root=root
    )

    if chosen != INTERPRETER:
        pytest.skip(f"LOUD SKIP: pyenv's Python {version} has boto3 and Powertools installed")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"python{version} cannot import boto3, aws_lambda_powertools" in warning


def test_a_matching_python_runs_the_function_when_codeuri_carries_the_dependencies(
    tmp_path: Path,
) -> None:
    version, root = other_python()
    for package in ("boto3", "aws_lambda_powertools"):  # vendored, as in a Lambda package
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "app.py").write_text(
        "import sys\n\ndef handle(event, context):\n    return list(sys.version_info[:2])\n"
    )

    chosen = resolve_interpreter(
        f"python{version}", tmp_path, search_path=str(tmp_path), pyenv_root=root
    )
    worker = Worker(
        FunctionSpec("other", tmp_path, "app.handle", runtime=f"python{version}"), chosen
    )
    try:
        result = worker.invoke({})
    finally:
        worker.close()

    assert chosen.version == version
    assert result.payload == [int(part) for part in version.split(".")]


# --- the pool ----------------------------------------------------------------------------------


def test_the_pool_gives_each_batch_in_flight_its_own_worker_and_reuses_the_warm_one(
    tmp_path: Path,
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    wait = {"action": "wait", "started": str(started), "release": str(release)}
    results: list[Any] = []
    with WorkerPool(function(), INTERPRETER) as invoke:
        in_flight = threading.Thread(target=lambda: results.append(invoke(wait, 30).payload))
        in_flight.start()
        while not started.exists() and in_flight.is_alive():
            time.sleep(0.01)
        other = invoke({"action": "count"}, 30).payload  # while the first is still in flight
        release.touch()
        in_flight.join()
        warm = invoke({"action": "count"}, 30).payload  # the most recently returned worker

    (first,) = results
    assert first["pid"] != other["pid"]
    assert (warm["pid"], warm["invocations"]) == (first["pid"], 2)


def test_closing_the_pool_ends_every_worker_process() -> None:
    pool = WorkerPool(function(), INTERPRETER)
    pid = pool({"action": "count"}, 30).payload["pid"]

    pool.close()

    assert not pid_exists(pid)
    with pytest.raises(NotInvoked, match="stopped"):
        pool({"action": "count"}, 30)


# --- the project's function --------------------------------------------------------------------


def test_the_projects_lambda_handler_runs_in_a_worker_and_its_metrics_are_captured(
    aws: boto3.Session, unique_name: str
) -> None:
    dynamodb = aws.client("dynamodb")
    dynamodb.create_table(
        TableName=unique_name,
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    sqs = aws.client("sqs")
    queue_url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    good_image = {
        "childId": {"S": "c-1"},
        "status": {"S": "nice"},
        "address": {"M": {"street": {"S": "1 Snow Lane"}}},
    }
    event = {
        "Records": [
            dynamodb_record(1, new_image=good_image),
            dynamodb_record(2, child="c-2"),  # no address: poison, parked
        ]
    }
    spec = FunctionSpec(
        name="ProcessorFunction",
        code_uri=REPOSITORY,
        handler="processor.app.lambda_handler",
        runtime=OURS,
        timeout=30,
        memory_size=512,
        environment={
            "DELIVERY_TABLE_NAME": unique_name,
            "DEAD_LETTER_QUEUE_URL": queue_url,
            "POWERTOOLS_SERVICE_NAME": "naughty-nice-projection",
            "POWERTOOLS_METRICS_NAMESPACE": "StreamProcessor",
        },
    )

    with WorkerPool(spec, INTERPRETER) as invoke:
        result = invoke(event, 30)

    assert result.error is None, result.error
    assert result.payload == {"batchItemFailures": []}
    delivered = dynamodb.get_item(TableName=unique_name, Key={"childId": {"S": "c-1"}})
    assert delivered["Item"]["status"] == {"S": "nice"}
    parked = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(m["Body"])["reason"] for m in parked] == ["poison"]
    totals = {
        (m.name, m.dimensions.get("reason")): sum(m.values)
        for m in result.metrics
        if m.namespace == "StreamProcessor"
    }
    assert totals[("RecordsProcessed", None)] == 1
    assert totals[("RecordsParked", "poison")] == 1
