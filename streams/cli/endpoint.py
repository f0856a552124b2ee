"""Which endpoint a command talks to, and how it says so.

`AWS_ENDPOINT_URL` first, then the endpoint `streams local up` recorded in `.streams/local.json`
(in the directory it was started from), then AWS itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import boto3

from streams.local.endpoint import (
    STATE_FILE,
    local_session,
    read_recorded_endpoint,
    region_or_default,
)

__all__ = ["Endpoint", "current_endpoint"]


@dataclass(frozen=True)
class Endpoint:
    """The endpoint a command talks to: a local one (`url`), or AWS itself (`url` is None)."""

    url: str | None
    origin: str
    region: str
    stack_name: str | None = None

    @property
    def is_local(self) -> bool:
        return self.url is not None

    def session(self) -> boto3.Session:
        """A session for this endpoint: moto's test credentials for a local one (a fresh
        machine has none of its own), the AWS credentials chain otherwise."""
        if self.is_local:
            return local_session(self.region)
        return boto3.Session(region_name=self.region)

    def describe(self) -> str:
        if self.url is None:
            return f"endpoint: AWS, region {self.region} (credentials from the AWS chain)"
        return f"endpoint: {self.url} (from {self.origin}), region {self.region}"


def current_endpoint(state_file: Path = STATE_FILE) -> Endpoint:
    """Where commands send their calls: AWS_ENDPOINT_URL, else `streams local up`'s, else AWS."""
    url = os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return Endpoint(url=url, origin="AWS_ENDPOINT_URL", region=region_or_default(None))
    recorded = read_recorded_endpoint(state_file)
    if recorded is not None:
        return Endpoint(
            url=recorded.endpoint_url,
            origin=str(state_file),
            region=recorded.region,
            stack_name=recorded.stack_name,
        )
    return Endpoint(url=None, origin="AWS", region=region_or_default(None))
