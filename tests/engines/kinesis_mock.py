"""kinesis-mock (npm `kinesis-local`): a second Kinesis for the tests, started on loopback.

`make test` installs the pinned package into `tests/engines/kinesis-mock/` (npm ci). Its quirks,
checked against version 0.6.2 (docs/local.md lists them beside AWS's documented behaviour):

- it reads its TLS certificate (`server.json`) from the working directory, so it runs there;
- it serves plain HTTP on `KINESIS_MOCK_PLAIN_PORT` and TLS on `KINESIS_MOCK_TLS_PORT`: both
  ports must be free. It binds every interface and has no setting for that, so `loopback.cjs`
  (preloaded) makes its servers listen on 127.0.0.1 only;
- resharding takes `SPLIT_SHARD_DURATION` / `MERGE_SHARDS_DURATION` (default 0.5 s, the stream
  is `UPDATING` meanwhile): 0 here, and tests still wait for `ACTIVE` as on AWS;
- it ignores SIGTERM while a client keeps a connection open: `stop` sends SIGKILL by pid after
  a grace period. Linux also kills it when the test process dies (parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

FOLDER = Path(__file__).parent / "kinesis-mock"
PACKAGE = FOLDER / "node_modules" / "kinesis-local"
LOOPBACK = FOLDER / "loopback.cjs"
GRACE_SECONDS = 3.0
STARTUP_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # The child is killed when the test process dies, even by SIGKILL: nothing is left behind.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class KinesisMock:
    """One kinesis-mock process on 127.0.0.1 (`endpoint`), until `stop`."""

    def __init__(self, *, shard_limit: int = 50) -> None:
        main = PACKAGE / "main.js"
        if not main.exists():
            raise RuntimeError(
                f"kinesis-mock is not installed ({main} is missing): run `make test`, which "
                "installs it with npm ci into tests/engines/kinesis-mock"
            )
        self._shard_limit = shard_limit
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        # A port found free may be taken before the server binds it (other test runs share the
        # machine): try again with new ports.
        for _ in range(3):
            if self._start():
                return
        output = self._output()  # before stop() closes the log
        self.stop()
        raise RuntimeError(f"kinesis-mock did not start:\n{output}")

    def _start(self) -> bool:
        plain, tls = _free_port(), _free_port()
        environment = {
            **os.environ,
            "KINESIS_MOCK_PLAIN_PORT": str(plain),
            "KINESIS_MOCK_TLS_PORT": str(tls),
            "CREATE_STREAM_DURATION": "0ms",
            "DELETE_STREAM_DURATION": "0ms",
            "SPLIT_SHARD_DURATION": "0ms",
            "MERGE_SHARDS_DURATION": "0ms",
            "UPDATE_SHARD_COUNT_DURATION": "0ms",
            "SHARD_LIMIT": str(self._shard_limit),
            "LOG_LEVEL": "WARN",
            # moto's account, so that a stack's ARNs name the same stream on both engines.
            "AWS_ACCOUNT_ID": "123456789012",
        }
        self._process = subprocess.Popen(
            ["node", "--require", str(LOOPBACK), "main.js"],
            cwd=PACKAGE,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        self.endpoint = f"http://127.0.0.1:{plain}"
        client = boto3.client(
            "kinesis",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return False  # it exited: a port was taken meanwhile, say
                try:
                    client.list_streams()
                except (BotoCoreError, ClientError):
                    time.sleep(0.1)
                else:
                    return True
        finally:
            client.close()
        self._kill()
        return False

    def _kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            # It ignores SIGTERM while a client holds a connection open.
            process.kill()
            process.wait()

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        try:
            self._kill()
        finally:
            self._log.close()
