"""Which URL a service is reached at: botocore's own per-service variables first.

botocore reads `AWS_ENDPOINT_URL_<SERVICE>` (for example `AWS_ENDPOINT_URL_KINESIS`,
`AWS_ENDPOINT_URL_DYNAMODB_STREAMS`) before `AWS_ENDPOINT_URL`, but only when a client is made
without an `endpoint_url`: one passed explicitly wins over both. The tools pass the endpoint they
found (`streams local up`'s, a stack's), so each client asks here first: a user can keep the tables
in moto and read a stream from LocalStack or kinesis-mock.
"""

from __future__ import annotations

from botocore.configprovider import ConfiguredEndpointProvider

__all__ = ["service_endpoint"]


def service_endpoint(service: str, default: str | None) -> str | None:
    """The URL for boto3's client `service` (`"kinesis"`, `"dynamodbstreams"`): the service's
    own variable, else `AWS_ENDPOINT_URL`, as botocore names and orders them, else `default`."""
    configured = ConfiguredEndpointProvider(
        full_config={}, scoped_config={}, client_name=service
    ).provide()
    return str(configured) if configured else default
