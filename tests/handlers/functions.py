"""A function for the worker tests: this directory is its CodeUri, `functions.handle` its Handler.

The event's `action` says what the invocation does, so that one warm worker can crash, hang or
succeed in turn.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric

# Module-level state: lives as long as the worker process (a warm Lambda sandbox).
invocations = 0


def handle(event: dict[str, Any], context: Any) -> Any:
    global invocations  # noqa: PLW0603 (the warm state under test)
    invocations += 1
    action = event["action"]
    if action == "echo":
        return event.get("value")
    if action == "count":
        return {"invocations": invocations, "pid": os.getpid()}
    if action == "raise":
        raise ValueError(f"cannot handle {event['value']!r}")
    if action == "exit":
        os._exit(1)
    if action == "sys-exit":
        sys.exit(event["value"])
    if action == "signal":
        os.kill(os.getpid(), getattr(signal, event["value"]))
        return None  # not reached: the signal ends the process
    if action == "hang":
        print("hanging", flush=True)
        while True:
            time.sleep(0.05)
    if action == "wait":  # in flight until the test creates `release`
        open(event["started"], "w").close()
        while not os.path.exists(event["release"]):
            time.sleep(0.01)
        return {"invocations": invocations, "pid": os.getpid()}
    if action == "context":
        first = context.get_remaining_time_in_millis()
        time.sleep(0.05)
        return {
            "first": first,
            "second": context.get_remaining_time_in_millis(),
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
        }
    if action == "environment":
        return {"environment": dict(os.environ), "cwd": os.getcwd(), "path0": sys.path[0]}
    if action == "log":
        print("to stdout", event["value"])
        print("to stderr", event["value"], file=sys.stderr)
        with single_metric(
            name="RecordsParked",
            unit=MetricUnit.Count,
            value=2,
            namespace="StreamProcessor",
            default_dimensions={"service": "tests", "reason": "poison"},
        ):
            pass
        return None
    if action == "aws":  # one AWS call, no retry: what it came to
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ClientError

        client = boto3.client("dynamodb", config=Config(retries={"total_max_attempts": 1}))
        try:
            client.list_tables()
        except ClientError:
            return "ClientError"
        except Exception as error:
            return type(error).__name__
        return "ok"
    if action == "allocate":
        return len(bytearray(event["value"] * 1024 * 1024))
    if action == "big":
        for _ in range(event["lines"]):
            print("x" * 1000)
        return event["value"]
    if action == "unserializable":
        return {1, 2}
    raise AssertionError(f"unknown action {action!r}")
