"""Shared fixtures: moto's server on 127.0.0.1 (a free port) as the embedded AWS endpoint.

Every test runs with fake credentials and `AWS_ENDPOINT_URL` pointing at that server, so no
test can reach a real AWS account even by accident.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

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
    """moto's server, started once per test session on 127.0.0.1 and stopped at its end."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
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
