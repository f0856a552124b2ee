"""Shared fixtures: moto's server on 127.0.0.1 (a free port) as the embedded AWS endpoint.

Every test runs with fake credentials and `AWS_ENDPOINT_URL` pointing at that server, so no
test can reach a real AWS account even by accident. `kinesis_mock` is a second Kinesis
(kinesis-mock, `tests/engines/kinesis_mock.py`) on 127.0.0.1, for the tests that run on both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from streams.local.endpoint import start_endpoint
from tests.engines.kinesis_mock import KinesisMock

REGION = "us-east-1"

# Set before any client exists: nothing in the test run talks to real AWS.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
)
for _name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server, as `streams local up` serves it, started once per test session on
    127.0.0.1 and stopped at its end."""
    server = start_endpoint(0)
    endpoint = server.url
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous


@pytest.fixture
def aws(moto_endpoint: str) -> boto3.Session:
    """A boto3 session whose clients talk to moto's server (via AWS_ENDPOINT_URL)."""
    return boto3.Session(region_name=REGION)


@pytest.fixture
def unique_name() -> str:
    """A resource name no other test uses (the server is shared by the whole session)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def _python312() -> str:
    candidates = [
        shutil.which("python3.12"),
        str(Path.home() / ".pyenv/versions/3.12.1/bin/python3.12"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PYENV_VERSION": "3.12.1"},
            )
            if probe.returncode == 0 and "(3, 12)" in probe.stdout:
                return candidate
    pytest.skip("NO PYTHON 3.12 ON THIS MACHINE: the built artifact cannot be run as on Lambda")


@pytest.fixture(scope="session")
def lambda_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A python3.12 with boto3 and nothing else, like Lambda's runtime."""
    python = _python312()
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    env = {**os.environ, "PYENV_VERSION": "3.12.1"}
    subprocess.run([python, "-m", "venv", venv], check=True, env=env)
    subprocess.run(
        [venv / "bin/python", "-m", "pip", "install", "--quiet", "boto3"], check=True, env=env
    )
    return venv / "bin/python"


@pytest.fixture(scope="session")
def kinesis_mock() -> Iterator[str]:
    """kinesis-mock, started once per test session on 127.0.0.1: its endpoint URL."""
    server = KinesisMock()
    try:
        yield server.endpoint
    finally:
        server.stop()
