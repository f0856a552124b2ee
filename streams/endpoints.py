"""Which URL a service is reached at: botocore's own per-service variables first.

botocore reads `AWS_ENDPOINT_URL_<SERVICE>` (for example `AWS_ENDPOINT_URL_KINESIS`,
`AWS_ENDPOINT_URL_DYNAMODB_STREAMS`) before `AWS_ENDPOINT_URL`, but only when a client is made
without an `endpoint_url`: one passed explicitly wins over both. The tools pass the endpoint they
found (`streams local up`'s, a stack's), so each client asks here first: a user can keep the tables
in moto and read a stream from LocalStack or kinesis-mock.
"""

from __future__ import annotations

import os

from botocore.configprovider import ConfiguredEndpointProvider

__all__ = ["service_endpoint"]


def service_endpoint(service: str, default: str | None) -> str | None:
    """The URL for boto3's client `service` (`"kinesis"`, `"dynamodbstreams"`): the service's
    own variable, as botocore names it, else `default` (the endpoint the caller found, which
    already took `AWS_ENDPOINT_URL` into account where it should: an explicit endpoint, a
    stack's, wins over it)."""
    own_only = {name: value for name, value in os.environ.items() if name != "AWS_ENDPOINT_URL"}
    configured = ConfiguredEndpointProvider(
        full_config={}, scoped_config={}, client_name=service, environ=own_only
    ).provide()
    return str(configured) if configured else default
