"""`--faults RATE`: the world failing around a scenario, on the real endpoint.

Each HTTP attempt of the AWS calls a `FaultInjector` watches fails, with probability `rate`, in
one of three ways, a third each: a throttling error (HTTP 400 with the service's throttling
code), a server error (HTTP 500 or 503) or a dropped connection (botocore's
`ConnectionClosedError`). Nothing reaches the endpoint for a failed attempt: the injector
answers in botocore's `before-send` event, in the protocol of the service (JSON for DynamoDB,
DynamoDB Streams, Kinesis and SQS; XML for S3), so botocore parses and retries it as it would
AWS's answer, and the caller's own retries take over when botocore gives up. The endpoint
itself stays moto's server: only the answers of the failed attempts are made here.

In the function's worker processes the injector is installed on boto3's default session (the
clients `boto3.client(...)` makes: the function's, the dead-letter queue's, a `RateLimit`'s)
by `install_from_environment`, which the workers run before importing the handler
(`STREAMS_WORKER_PRELOAD`, a test-only seam of `streams.mapping.function`). There it also
kills its own process (SIGKILL) in the middle of an AWS call, with probability `kill_rate` per
attempt: a crash in the middle of a batch, which Lambda retries.

Every fault is written to a log file, one line each (`where`, `kind`, the call), so that the
scenario counts the faults of every process, the workers' included, once they are over.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError
from botocore.hooks import BaseEventHooks

__all__ = [
    "FAULTS_VARIABLE",
    "KINDS",
    "PRELOAD",
    "FaultInjector",
    "FaultKind",
    "FaultPlan",
    "count_faults",
    "install_from_environment",
    "worker_environment",
]

FaultKind = Literal["throttling", "5xx", "connection", "kill"]
KINDS: Final[tuple[FaultKind, ...]] = ("throttling", "5xx", "connection", "kill")
#: The worker processes read their plan from this variable (JSON of a `FaultPlan`).
FAULTS_VARIABLE: Final = "STREAMS_DEMO_FAULTS"
#: What the workers run before importing the handler (`module:function`).
PRELOAD: Final = "streams.demo.faults:install_from_environment"
PRELOAD_VARIABLE: Final = "STREAMS_WORKER_PRELOAD"

# The throttling code each service answers (all in botocore's and our THROTTLING_CODES).
_THROTTLING_CODES: Final = {
    "dynamodb": "ProvisionedThroughputExceededException",
    "kinesis": "ProvisionedThroughputExceededException",
    "dynamodbstreams": "LimitExceededException",
    "s3": "SlowDown",
}
_MESSAGE: Final = "injected by streams demo --faults"


@dataclass(frozen=True)
class FaultPlan:
    """How often calls fail, where the faults are written, and the seed of the draws."""

    rate: float
    log: str
    seed: int = 0
    #: The chance, per AWS call attempt of the function, that its worker process is killed.
    kill_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.rate <= 1 or not 0 <= self.kill_rate <= 1:
            raise ValueError("fault rates are fractions from 0 to 1")


class _Raw:
    """A response body botocore can read (`AWSResponse.raw`)."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterable[bytes]:
        yield self._body


class FaultInjector:
    """Fails a share of the AWS calls made with the event hooks it is installed on."""

    def __init__(self, plan: FaultPlan, where: str) -> None:
        self.plan = plan
        self.where = where
        # Each process and each part draws its own faults.
        self._random = random.Random(f"{plan.seed}:{where}:{os.getpid()}")

    def install(self, events: BaseEventHooks) -> None:
        """Watch every call made by clients created from these hooks from now on (a boto3
        session's `events`: its clients copy them when they are created)."""
        events.register("before-call", self._note_protocol)
        # botocore's stubs type handlers as returning None; before-send may return a response.
        events.register("before-send", cast(Any, self._before_send))

    @staticmethod
    def _note_protocol(model: Any, context: dict[str, Any], **_: Any) -> None:
        context["streams_fault_protocol"] = model.service_model.protocol

    def _before_send(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        call = event_name.removeprefix("before-send.")
        if self.plan.kill_rate and self._random.random() < self.plan.kill_rate:
            self._log("kill", call)
            os.kill(os.getpid(), signal.SIGKILL)
        if self._random.random() >= self.plan.rate:
            return None
        protocol = request.context.get("streams_fault_protocol")
        kinds: tuple[FaultKind, ...] = ("throttling", "5xx", "connection")
        if protocol not in ("json", "rest-xml"):
            kinds = ("connection",)  # an answer we cannot write in the service's protocol
        kind = self._random.choice(kinds)
        self._log(kind, call)
        if kind == "connection":
            raise ConnectionClosedError(endpoint_url=request.url)
        service = call.split(".", 1)[0]
        if kind == "throttling":
            code = _THROTTLING_CODES.get(service, "ThrottlingException")
            status = 503 if protocol == "rest-xml" else 400
        else:
            status = self._random.choice((500, 503))
            code = "InternalServerError" if status == 500 else "ServiceUnavailable"
        return _answer(request.url, protocol, status, code)

    def _log(self, kind: FaultKind, call: str) -> None:
        line = f"{self.where}\t{kind}\t{call}\n".encode()
        # One write of a short line in append mode: lines from many processes never interleave.
        descriptor = os.open(self.plan.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)


def _answer(url: str, protocol: str, status: int, code: str) -> AWSResponse:
    if protocol == "json":
        headers = {"content-type": "application/x-amz-json-1.0"}
        body = json.dumps({"__type": code, "message": _MESSAGE}).encode()
    else:
        headers = {"content-type": "application/xml"}
        body = f"<Error><Code>{code}</Code><Message>{_MESSAGE}</Message></Error>".encode()
    return AWSResponse(url, status, cast(Any, headers), _Raw(body))


def worker_environment(plan: FaultPlan) -> dict[str, str]:
    """The variables that make the function's worker processes inject faults."""
    return {PRELOAD_VARIABLE: PRELOAD, FAULTS_VARIABLE: json.dumps(asdict(plan))}


def install_from_environment(environ: Mapping[str, str] = os.environ) -> None:
    """In a function's worker: inject faults into the calls of boto3's default session."""
    text = environ.get(FAULTS_VARIABLE)
    if not text:
        return
    import boto3

    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    FaultInjector(FaultPlan(**json.loads(text)), "function").install(boto3.DEFAULT_SESSION.events)


def count_faults(log: Path) -> Counter[tuple[str, FaultKind]]:
    """The faults injected so far, by where and kind."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return Counter()
    counts: Counter[tuple[str, FaultKind]] = Counter()
    for line in lines:
        where, kind, _ = line.split("\t", 2)
        if kind in KINDS:
            counts[where, kind] += 1
    return counts
