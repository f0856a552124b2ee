"""template.yaml: linted by SAM and cfn-lint, built by `sam build`, and the artifact runs alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
BIN = Path(sys.executable).parent
QUIET = {**os.environ, "SAM_CLI_TELEMETRY": "0"}


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads !Ref, !GetAtt, !Sub ... as plain values, enough to inspect the template."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        return {suffix: loader.construct_scalar(node)}
    if isinstance(node, yaml.SequenceNode):
        return {suffix: loader.construct_sequence(node)}
    return {suffix: loader.construct_mapping(node)}  # type: ignore[arg-type]


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def _template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CloudFormationLoader)
    return loaded


def test_cfn_lint_reports_nothing() -> None:
    result = subprocess.run(
        [BIN / "cfn-lint", TEMPLATE], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_sam_validate_lint_reports_nothing() -> None:
    result = subprocess.run(
        [BIN / "sam", "validate", "--lint", "-t", TEMPLATE],
        capture_output=True,
        text=True,
        check=False,
        env=QUIET,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout


def test_the_mapping_gives_up_after_the_core_parks_and_before_the_stream_drops() -> None:
    template = _template()
    stream = template["Resources"]["ProcessorFunction"]["Properties"]["Events"]["Stream"]
    settings = stream["Properties"]
    core_limit = template["Parameters"]["MaxRecordAgeSeconds"]
    assert settings["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert core_limit["Default"] <= core_limit["MaxValue"] < settings["MaximumRecordAgeInSeconds"]
    assert settings["MaximumRecordAgeInSeconds"] < 24 * 3600  # DynamoDB streams keep 24 h
    assert settings["DestinationConfig"]["OnFailure"]["Type"] == "SQS"
    assert settings["StartingPosition"] == "TRIM_HORIZON"


def test_the_dashboard_body_is_json_once_substituted() -> None:
    body = _template()["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Sub"]
    substituted = re.sub(r"\$\{[^}]+\}", "x", body)
    widgets = json.loads(substituted)["widgets"]
    titles = " ".join(w["properties"]["title"] for w in widgets)
    for shown in ("Iterator age", "events", "parked", "Queues"):
        assert shown in titles


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("sam") / "build"
    result = subprocess.run(
        [BIN / "sam", "build", "--build-dir", build, "-t", TEMPLATE],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**QUIET, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return build / "ProcessorFunction"


def test_sam_build_makes_a_small_artifact_without_boto3(artifact: Path) -> None:
    names = {path.name for path in artifact.iterdir()}
    assert {"streams", "processor", "aws_lambda_powertools"} <= names
    assert "boto3" not in names and "botocore" not in names  # the runtime's own
    assert not (artifact / "streams" / "mapping").exists()  # runs functions, never inside one
    size = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
    assert size < 10 * 1024 * 1024


def test_the_built_artifact_handles_a_sample_event_in_a_clean_interpreter(
    artifact: Path, lambda_runtime: Path, aws: boto3.Session, unique_name: str
) -> None:
    dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
    dynamodb.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    queue = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    event = {
        "Records": [
            {
                "eventID": "1" * 32,
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/s/stream/x",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1795000000,
                    "Keys": {"childId": {"S": "c-1"}},
                    "NewImage": {
                        "childId": {"S": "c-1"},
                        "status": {"S": "nice"},
                        "region": {"S": "north"},
                        "address": {"M": {"city": {"S": "Oslo"}}},
                    },
                    "SequenceNumber": "111",
                    "SizeBytes": 60,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        ]
    }
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(artifact)!r})
        import processor.app, streams
        assert processor.app.__file__.startswith({str(artifact)!r}), processor.app.__file__
        assert streams.__file__.startswith({str(artifact)!r}), streams.__file__
        print(json.dumps(processor.app.lambda_handler(json.loads(sys.argv[1]), None)))
        """
    )
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DELIVERY_TABLE_NAME": unique_name,
        "DEAD_LETTER_QUEUE_URL": queue,
    }
    result = subprocess.run(
        [lambda_runtime, "-I", "-c", script, json.dumps(event)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=artifact.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '{"batchItemFailures": []}'
    item = dynamodb.get_item(TableName=unique_name, Key={"childId": {"S": "c-1"}})["Item"]
    assert item["sequenceNumber"] == {"S": "111".zfill(40)}


def test_the_built_hydrate_function_parks_what_an_on_failure_record_points_to(
    artifact: Path, lambda_runtime: Path, aws: boto3.Session, unique_name: str
) -> None:
    dynamodb, sqs = aws.client("dynamodb"), aws.client("sqs")
    table = dynamodb.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]
    dynamodb.put_item(TableName=unique_name, Item={"childId": {"S": "c-1"}, "status": {"S": "?"}})
    stream_arn = table["LatestStreamArn"]
    streams_client = aws.client("dynamodbstreams")
    shard = streams_client.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]
    iterator = streams_client.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    (change,) = streams_client.get_records(ShardIterator=iterator)["Records"]
    sequence = change["dynamodb"]["SequenceNumber"]
    queue = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    on_failure = {
        "requestContext": {
            "requestId": "r-1",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:processor",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None},
        "version": "1.0",
        "timestamp": "2026-11-22T00:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": shard["ShardId"],
            "startSequenceNumber": sequence,
            "endSequenceNumber": sequence,
            "approximateArrivalOfFirstRecord": "2026-11-22T00:00:00Z",
            "approximateArrivalOfLastRecord": "2026-11-22T00:00:00Z",
            "batchSize": 1,
            "streamArn": stream_arn,
        },
    }
    event = {"Records": [{"messageId": "m-1", "body": json.dumps(on_failure)}]}
    hydrate = artifact.parent / "HydrateFunction"
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(hydrate)!r})
        import processor.hydrate
        print(json.dumps(processor.hydrate.lambda_handler(json.loads(sys.argv[1]), None)))
        """
    )
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DEAD_LETTER_QUEUE_URL": queue,
    }
    result = subprocess.run(
        [lambda_runtime, "-I", "-c", script, json.dumps(event)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=artifact.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '{"batchItemFailures": []}'
    (message,) = sqs.receive_message(QueueUrl=queue)["Messages"]
    parked = json.loads(message["Body"])
    assert parked["reason"] == "hydrated"
    assert parked["record"]["dynamodb"]["SequenceNumber"] == sequence
    assert parked["record"]["eventVersion"] == "1.1"
