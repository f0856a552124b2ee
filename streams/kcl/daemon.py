"""KCL's MultiLangDaemon: its jars, its properties file and its command line.

amazon-kclpy installs the KCL jars with its package (its install step downloads them from
Maven Central); `jar_folder` finds them. The daemon reads a Java properties file (`properties_text`
writes one) and starts `executableName` once per shard lease (`streams kcl worker`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import UserError

__all__ = [
    "CLOUDWATCH",
    "DYNAMODB",
    "ENDPOINTS",
    "KINESIS",
    "LOCAL_SETTINGS",
    "MULTILANG_DAEMON",
    "NOT_INSTALLED",
    "ServiceEndpoint",
    "daemon_command",
    "jar_folder",
    "kcl_jars",
    "local_endpoints",
    "properties_text",
]

MULTILANG_DAEMON = "software.amazon.kinesis.multilang.MultiLangDaemon"
_MULTILANG_JAR_PREFIX = "amazon-kinesis-client-multilang-"
_HOW_TO_GET_JARS = (
    "install amazon-kclpy where Maven Central is reachable (pip install 'streams[kcl]' builds it "
    "and downloads the jars its pom.xml lists; KCL_MVN_REPO_SEARCH_URL points it at a mirror), "
    "or pass --jars DIR with those jars"
)
NOT_INSTALLED = (
    "amazon-kclpy is not installed ({error}): install the kcl extra "
    "(README, 'Running on a KCL fleet')"
)


@dataclass(frozen=True)
class ServiceEndpoint:
    """One of the daemon's three AWS clients: its property, and the variable naming its endpoint."""

    service: str
    property: str
    variable: str


#: The daemon's AWS clients. The AWS SDKs (boto3 and the SDK for Java alike) take a service's
#: endpoint from its own variable first, then from AWS_ENDPOINT_URL. KCL has `kinesisEndpoint`
#: and `dynamoDBEndpoint`; the CloudWatch client it builds takes `endpointOverride` the same way.
KINESIS = ServiceEndpoint("Kinesis", "kinesisEndpoint", "AWS_ENDPOINT_URL_KINESIS")
DYNAMODB = ServiceEndpoint("DynamoDB", "dynamoDBEndpoint", "AWS_ENDPOINT_URL_DYNAMODB")
CLOUDWATCH = ServiceEndpoint(
    "CloudWatch", "cloudWatchClient.endpointOverride", "AWS_ENDPOINT_URL_CLOUDWATCH"
)
ENDPOINTS = (KINESIS, DYNAMODB, CLOUDWATCH)


def local_endpoints(environment: Mapping[str, str]) -> dict[ServiceEndpoint, str]:
    """The endpoint each of the daemon's clients would use, where the environment names one."""
    found = {}
    for endpoint in ENDPOINTS:
        url = environment.get(endpoint.variable) or environment.get("AWS_ENDPOINT_URL")
        if url:
            found[endpoint] = url
    return found


#: `streams kcl properties --local`: a fleet on a laptop, against local endpoints, that reacts in
#: seconds. Each value with why; none of them belongs on a fleet on AWS.
LOCAL_SETTINGS: Mapping[str, tuple[str | int, str]] = {
    "retrievalMode": (
        "POLLING",
        "GetRecords: local endpoints do not serve enhanced fan-out (SubscribeToShard, HTTP/2)",
    ),
    "idleTimeBetweenReadsInMillis": (200, "a read every 0.2 s per shard (default 1.5 s)"),
    "failoverTimeMillis": (
        2000,
        "a lease not renewed for 2 s is free to take: a dead worker's shards move in seconds "
        "(default 10 s)",
    ),
    "leaseAssignmentIntervalMillis": (
        1000,
        "the leader assigns free leases every second (default twice failoverTimeMillis)",
    ),
    "workerMetricsReporterFreqInMillis": (
        1000,
        "a worker reports its load every second (default 30 s): a new worker gets leases sooner",
    ),
    "shardSyncIntervalMillis": (
        1000,
        "a split or merge is seen within a second (default 60 s)",
    ),
    "parentShardPollIntervalMillis": (
        1000,
        "a child shard checks every second whether its parents are done (default 10 s)",
    ),
}


def properties_text(
    values: Mapping[str, str | int], comments: Mapping[str, str] | None = None
) -> str:
    """The file, one `name = value` line each; `comments` puts a comment above a setting."""
    lines = [
        "# KCL MultiLangDaemon properties, written by `streams kcl properties`.",
        "# Start the daemon with: streams kcl run --properties <this file>",
        "# All settings: amazon-kclpy's samples/sample.properties.",
    ]
    for name, value in values.items():
        comment = (comments or {}).get(name)
        if comment:
            lines.append(f"# {comment}")
        lines.append(f"{name} = {_escape(str(value))}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A value as java.util.Properties reads it (ISO 8859-1, backslash escapes)."""
    return "".join(
        "\\\\" if char == "\\" else char if " " <= char <= "~" else f"\\u{ord(char):04x}"
        for char in value
    )


def kcl_jars(folder: Path) -> list[Path]:
    """The KCL jars in `folder`; a `UserError` if the daemon's jar is missing or one is no jar."""
    jars = sorted(folder.glob("*.jar"))
    if not any(jar.name.startswith(_MULTILANG_JAR_PREFIX) for jar in jars):
        raise UserError(
            f"the KCL jars are missing from {folder} (no {_MULTILANG_JAR_PREFIX}*.jar): "
            + _HOW_TO_GET_JARS
        )
    for jar in jars:
        try:
            with zipfile.ZipFile(jar):
                pass
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(
                f"{jar} is not a jar (it does not open as a zip archive: {error}): "
                + _HOW_TO_GET_JARS
            ) from None
    return jars


def jar_folder() -> Path:
    """Where amazon-kclpy keeps the KCL jars it installed."""
    return Path(_helper().get_kcl_dir()) / "jars"


def daemon_command(
    properties: Path, *, jars: Path, java: str, log_configuration: Path | None = None
) -> list[str]:
    """The MultiLangDaemon's command line for `properties`, with the jars of `jars` only.

    One folder's jars: amazon-kclpy's helper would append its own jars to another folder's,
    mixing two KCL versions on one classpath. The properties file's folder comes last, as the
    helper puts it: the daemon looks the file up on the classpath before the file system.
    """
    classpath = [*kcl_jars(jars), properties.absolute().parent]
    command = [
        java,
        "-cp",
        os.pathsep.join(str(entry) for entry in classpath),
        MULTILANG_DAEMON,
        "--properties-file",
        str(properties),
    ]
    if log_configuration is not None:
        command += ["--log-configuration", str(log_configuration)]
    return command


def _helper() -> Any:
    """amazon-kclpy's amazon_kclpy_helper (it knows where the package keeps its jars)."""
    try:
        from samples import (  # type: ignore[import-untyped]
            amazon_kclpy_helper,
        )
    except ImportError as error:
        raise UserError(NOT_INSTALLED.format(error=error)) from None
    return amazon_kclpy_helper
