"""`--faults`: AWS calls fail as AWS fails them (throttling, 5xx, dropped connections), botocore
reads and retries them, the function's workers inject them too, and are killed mid-call."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from streams.backoff import THROTTLING_CODES
from streams.demo.faults import FaultInjector, FaultPlan, count_faults, worker_environment
from streams.mapping.function.interpreter import Interpreter
from streams.mapping.function.pool import Worker
from streams.mapping.function.spec import FunctionSpec

HANDLERS = Path(__file__).parent / "handlers"
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def faulted(aws: boto3.Session, plan: FaultPlan, **config: Any) -> Any:
    session = boto3.Session(region_name=aws.region_name)
    FaultInjector(plan, "test").install(session.events)
    return session.client("dynamodb", config=Config(**config))


def test_every_faulted_call_fails_as_aws_fails_one_and_is_logged(
    aws: boto3.Session, tmp_path: Path
) -> None:
    log = tmp_path / "faults.log"
    client = faulted(aws, FaultPlan(rate=1.0, log=str(log)), retries={"total_max_attempts": 1})
    outcomes: Counter[str] = Counter()

    for _ in range(40):
        with pytest.raises((ClientError, ConnectionClosedError)) as raised:
            client.list_tables()
        error = raised.value
        if isinstance(error, ClientError):
            code = error.response["Error"]["Code"]
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
            assert code in THROTTLING_CODES or status in (500, 503), (code, status)
            outcomes["throttling" if code in THROTTLING_CODES else "5xx"] += 1
        else:
            outcomes["connection"] += 1

    assert set(outcomes) == {"throttling", "5xx", "connection"}
    assert count_faults(log) == Counter({("test", kind): n for kind, n in outcomes.items()})


def test_at_a_low_rate_botocores_retries_absorb_the_faults(
    aws: boto3.Session, tmp_path: Path, unique_name: str
) -> None:
    log = tmp_path / "faults.log"
    aws.client("dynamodb").create_table(
        TableName=unique_name,
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client = faulted(aws, FaultPlan(rate=0.2, log=str(log), seed=3))

    for n in range(60):
        client.put_item(TableName=unique_name, Item={"k": {"S": str(n)}})

    assert aws.client("dynamodb").scan(TableName=unique_name)["Count"] == 60
    assert sum(count_faults(log).values()) > 0


def worker(plan: FaultPlan) -> Worker:
    spec = FunctionSpec(
        name="faults-test",
        code_uri=HANDLERS,
        handler="functions.handle",
        runtime=f"python{VERSION}",
        timeout=10,
        environment=worker_environment(plan),
    )
    return Worker(spec, Interpreter(sys.executable, VERSION))


def test_the_functions_workers_inject_faults_into_its_calls(
    moto_endpoint: str, tmp_path: Path
) -> None:
    log = tmp_path / "faults.log"
    faulty = worker(FaultPlan(rate=1.0, log=str(log)))
    try:
        outcomes = {faulty.invoke({"action": "aws"}).payload for _ in range(12)}
    finally:
        faulty.close()

    assert outcomes <= {"ClientError", "ConnectionClosedError"} and outcomes
    assert {where for where, _ in count_faults(log)} == {"function"}


def test_faults_kill_the_worker_in_the_middle_of_an_aws_call(
    moto_endpoint: str, tmp_path: Path
) -> None:
    log = tmp_path / "faults.log"
    doomed = worker(FaultPlan(rate=0.0, log=str(log), kill_rate=1.0))
    try:
        result = doomed.invoke({"action": "aws"})
    finally:
        doomed.close()

    assert result.error is not None
    assert (result.error.kind, result.error.error_type) == ("crash", "Runtime.ExitError")
    assert count_faults(log) == Counter({("function", "kill"): 1})
