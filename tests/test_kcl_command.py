"""`streams kcl properties`, `streams kcl run` and the worker's start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent
STREAM_ARN = "arn:aws:kinesis:eu-west-1:123456789012:stream/updates"


def read_properties(path: Path) -> dict[str, str]:
    """The file as java.util.Properties reads it (for what this command writes)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="iso-8859-1").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" = ")
            values[name] = value
    return values


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("streams: error: ")
    assert err.count("\n") == 1, err
    return err


@pytest.fixture
def no_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS itself: no endpoint variable (the session's moto fixture may have set one)."""
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)


def test_properties_name_the_worker_the_stream_the_application_and_the_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_endpoints: None
) -> None:
    output = tmp_path / "kcl.properties"

    code = main(
        [
            "kcl",
            "properties",
            "--stream-arn",
            STREAM_ARN,
            "--application",
            "naughty-nice",
            "--handler",
            "processor.app:handle",
            "--queue-url",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/dead-letters",
            "--max-records",
            "500",
            "--concurrency",
            "8",
            "--output",
            str(output),
        ]
    )

    assert code == 0
    assert read_properties(output) == {
        "executableName": f"{sys.executable} -m streams kcl worker --handler processor.app:handle "
        f"--stream-arn {STREAM_ARN} --region eu-west-1 "
        "--queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/dead-letters "
        "--concurrency 8",
        "streamName": "updates",
        "streamArn": STREAM_ARN,
        "applicationName": "naughty-nice",
        "regionName": "eu-west-1",
        "initialPositionInStream": "TRIM_HORIZON",
        "AwsCredentialsProvider": "DefaultCredentialsProvider",
        "processingLanguage": f"python/{sys.version_info.major}.{sys.version_info.minor}",
        "maxRecords": "500",
    }
    out = capsys.readouterr().out
    assert f"wrote {output}" in out
    assert "(AWS region eu-west-1)" in out


def test_properties_point_the_daemon_at_the_endpoints_boto3_would_use(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_endpoints: None,
) -> None:
    # Both SDKs prefer the service's own variable to AWS_ENDPOINT_URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4568")
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:5001")
    output = tmp_path / "kcl.properties"
    args = ["kcl", "properties", "--stream-arn", STREAM_ARN, "--application", "a"]

    assert main([*args, "--handler", "m:f", "-o", str(output)]) == 0

    properties = read_properties(output)
    assert properties["kinesisEndpoint"] == "http://127.0.0.1:4568"
    assert properties["dynamoDBEndpoint"] == "http://127.0.0.1:5000"
    assert properties["cloudWatchClient.endpointOverride"] == "http://127.0.0.1:5001"
    assert "retrievalMode" not in properties  # the local settings only with --local
    assert (
        "(endpoints Kinesis http://127.0.0.1:4568, DynamoDB http://127.0.0.1:5000, "
        "CloudWatch http://127.0.0.1:5001)" in capsys.readouterr().out
    )


def test_properties_name_no_endpoint_for_aws_itself(tmp_path: Path, no_endpoints: None) -> None:
    output = tmp_path / "kcl.properties"
    args = ["kcl", "properties", "--stream-arn", STREAM_ARN, "--application", "a"]

    assert main([*args, "--handler", "m:f", "-o", str(output)]) == 0

    assert not {"kinesisEndpoint", "dynamoDBEndpoint", "cloudWatchClient.endpointOverride"} & set(
        read_properties(output)
    )


def test_local_properties_poll_and_move_leases_in_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_endpoints: None
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    output = tmp_path / "kcl.properties"
    args = ["kcl", "properties", "--stream-arn", STREAM_ARN, "--application", "a", "--local"]

    assert main([*args, "--handler", "m:f", "-o", str(output)]) == 0

    properties = read_properties(output)
    assert properties["retrievalMode"] == "POLLING"
    assert int(properties["failoverTimeMillis"]) < 10000  # KCL's default
    assert int(properties["shardSyncIntervalMillis"]) < 60000  # KCL's default
    # CloudWatch is on the local endpoint too: KCL's metrics go there.
    assert "metricsLevel" not in properties
    # Every setting says why, in a comment above it.
    lines = output.read_text(encoding="iso-8859-1").splitlines()
    assert lines[lines.index("retrievalMode = POLLING") - 1].startswith("# --local: ")


def test_local_properties_without_a_cloudwatch_endpoint_turn_kcl_metrics_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_endpoints: None
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4568")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:5000")
    output = tmp_path / "kcl.properties"
    args = ["kcl", "properties", "--stream-arn", STREAM_ARN, "--application", "a", "--local"]

    assert main([*args, "--handler", "m:f", "-o", str(output)]) == 0

    properties = read_properties(output)
    assert "cloudWatchClient.endpointOverride" not in properties
    assert properties["metricsLevel"] == "NONE"


@pytest.mark.parametrize(
    "variables",
    [{}, {"AWS_ENDPOINT_URL_KINESIS": "http://127.0.0.1:4568"}],
    ids=["none", "kinesis only"],
)
def test_local_properties_without_local_endpoints_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_endpoints: None,
    variables: dict[str, str],
) -> None:
    # Seconds-long failover on a fleet on AWS would churn leases: --local is for local endpoints.
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    output = tmp_path / "kcl.properties"
    args = ["kcl", "properties", "--stream-arn", STREAM_ARN, "--application", "a", "--local"]

    assert main([*args, "--handler", "m:f", "-o", str(output)]) == 2

    assert "--local needs local endpoints" in one_line_error(capsys)
    assert not output.exists()


def test_properties_look_up_the_stream_arn_by_name(
    aws: boto3.Session, unique_name: str, tmp_path: Path, moto_endpoint: str
) -> None:
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName=unique_name, ShardCount=1)
    arn = kinesis.describe_stream_summary(StreamName=unique_name)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    output = tmp_path / "kcl.properties"

    code = main(
        [
            "kcl",
            "properties",
            "--stream",
            unique_name,
            "--application",
            "app",
            "--handler",
            "m:f",
            "--initial-position",
            "LATEST",
            "-o",
            str(output),
        ]
    )

    assert code == 0
    properties = read_properties(output)
    assert properties["streamArn"] == arn
    assert properties["streamName"] == unique_name
    assert properties["regionName"] == "us-east-1"
    assert properties["initialPositionInStream"] == "LATEST"


def test_properties_for_a_stream_that_does_not_exist_is_one_clear_line(
    aws: boto3.Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "kcl",
            "properties",
            "--stream",
            "nowhere",
            "--application",
            "a",
            "--handler",
            "m:f",
            "-o",
            str(tmp_path / "kcl.properties"),
        ]
    )

    assert code == 2
    assert "no Kinesis stream 'nowhere' in us-east-1" in one_line_error(capsys)
    assert not (tmp_path / "kcl.properties").exists()


def test_properties_never_overwrite_a_file_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "kcl.properties"
    output.write_text("mine\n")
    args = ["kcl", "properties", "--stream-arn", STREAM_ARN, "--application", "a"]
    args += ["--handler", "m:f", "-o", str(output)]

    assert main(args) == 2
    assert "pass --force" in one_line_error(capsys)
    assert output.read_text() == "mine\n"
    assert main([*args, "--force"]) == 0
    assert read_properties(output)["applicationName"] == "a"


def test_properties_refuse_a_value_the_daemon_would_split_on_its_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "kcl",
            "properties",
            "--stream-arn",
            STREAM_ARN,
            "--application",
            "a",
            "--handler",
            "m:f",
            "--queue-url",
            "a queue",
            "-o",
            str(tmp_path / "p"),
        ]
    )

    assert code == 2
    assert "splits it on spaces" in one_line_error(capsys)


def test_properties_escape_what_java_properties_would_read_otherwise(tmp_path: Path) -> None:
    output = tmp_path / "kcl.properties"

    main(
        [
            "kcl",
            "properties",
            "--stream-arn",
            STREAM_ARN,
            "--application",
            "Père\\Noël",
            "--handler",
            "m:f",
            "-o",
            str(output),
        ]
    )

    assert read_properties(output)["applicationName"] == "P\\u00e8re\\\\No\\u00ebl"


def test_run_without_the_kcl_jars_says_so_and_how_to_provide_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    properties = tmp_path / "kcl.properties"
    properties.write_text("applicationName = a\n")

    code = main(["kcl", "run", "--properties", str(properties), "--jars", str(tmp_path)])

    assert code == 2
    error = one_line_error(capsys)
    assert "the KCL jars are missing" in error
    assert "KCL_MVN_REPO_SEARCH_URL" in error


def test_run_starts_the_daemon_from_the_jars_amazon_kclpy_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    properties = tmp_path / "kcl.properties"
    properties.write_text("applicationName = a\n")

    assert main(["kcl", "run", "--properties", str(properties), "--print"]) == 0
    command = capsys.readouterr().out.split()
    classpath = [Path(entry) for entry in command[command.index("-cp") + 1].split(os.pathsep)]
    jars = [entry for entry in classpath if entry.suffix == ".jar"]
    assert any(jar.name.startswith("amazon-kinesis-client-multilang-") for jar in jars)
    assert all(
        jar.parent.name == "jars" and jar.parent.parent.name == "amazon_kclpy" for jar in jars
    )
    assert all(zipfile.is_zipfile(jar) for jar in jars)


def test_run_refuses_a_jar_that_does_not_open_as_a_zip_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    properties = tmp_path / "kcl.properties"
    properties.write_text("applicationName = a\n")
    jars = tmp_path / "jars"
    jars.mkdir()
    # What a failed download leaves behind.
    (jars / "amazon-kinesis-client-multilang-3.5.3.jar").write_text("<html>404</html>")

    code = main(["kcl", "run", "--properties", str(properties), "--jars", str(jars)])

    assert code == 2
    assert "amazon-kinesis-client-multilang-3.5.3.jar is not a jar" in one_line_error(capsys)


def test_run_prints_the_daemon_command_with_the_jars_and_the_properties_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    properties = tmp_path / "kcl.properties"
    properties.write_text("applicationName = a\n")
    jars = tmp_path / "jars"
    jars.mkdir()
    jar = jars / "amazon-kinesis-client-multilang-3.5.3.jar"
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")

    code = main(
        [
            "kcl",
            "run",
            "--properties",
            str(properties),
            "--jars",
            str(jars),
            "--java",
            "/opt/java/bin/java",
            "--print",
        ]
    )

    assert code == 0
    command = capsys.readouterr().out.split()
    assert command[:2] == ["/opt/java/bin/java", "-cp"]
    assert command[2].split(os.pathsep) == [str(jar), str(tmp_path)]
    assert command[3:] == [
        "software.amazon.kinesis.multilang.MultiLangDaemon",
        "--properties-file",
        str(properties),
    ]


def worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "kcl", "worker", *args],
        cwd=ROOT,
        env=env,
        input="",
        capture_output=True,
        text=True,
        check=False,
    )


def test_worker_without_a_dead_letter_queue_stops_with_one_line_and_a_clean_stdout() -> None:
    env = {name: value for name, value in os.environ.items() if name != "DEAD_LETTER_QUEUE_URL"}

    result = worker("--handler", "tests.kcl_handlers:scripted", env=env)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("streams: error: DEAD_LETTER_QUEUE_URL is not set")


def test_worker_with_a_handler_that_cannot_be_imported_stops_with_one_line() -> None:
    result = worker("--handler", "no_such_module:handle", env=dict(os.environ))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "streams: error: cannot import handler module 'no_such_module': "
        "No module named 'no_such_module'\n"
    )


def test_worker_without_amazon_kclpy_says_how_to_install_it() -> None:
    script = (
        "import sys\n"
        "sys.modules['amazon_kclpy'] = None  # as if the kcl extra were not installed\n"
        "from streams.cli import main\n"
        "raise SystemExit(main(['kcl', 'worker', '--handler', 'm:f']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("streams: error: amazon-kclpy is not installed")
    assert "install the kcl extra" in result.stderr
