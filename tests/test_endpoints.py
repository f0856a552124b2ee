"""Per-service endpoints: botocore's `AWS_ENDPOINT_URL_<SERVICE>` wins over the one endpoint a
command found, so the tables can stay in moto while the stream is on kinesis-mock."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from streams.cli import main
from streams.endpoints import service_endpoint
from streams.local.stack import deploy_template
from tests.run_functions import KINESIS_TEMPLATE, item_keys


def test_a_services_own_variable_wins_over_the_endpoint_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "http://127.0.0.1:1111")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:2222")
    assert service_endpoint("dynamodbstreams", "http://recorded") == "http://127.0.0.1:1111"
    assert service_endpoint("kinesis", "http://recorded") == "http://127.0.0.1:2222"
    assert service_endpoint("dynamodb", "http://recorded") == "http://recorded"
    assert service_endpoint("sqs", None) is None


def test_the_global_variable_never_overrides_an_endpoint_a_caller_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3333")
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDFORMATION", raising=False)
    assert service_endpoint("cloudformation", "http://127.0.0.1:9") == "http://127.0.0.1:9"


def test_streams_run_reads_a_stream_on_kinesis_mock_while_its_tables_are_in_moto(  # noqa: PLR0917
    moto_endpoint: str,
    kinesis_mock: str,
    aws: boto3.Session,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = tmp_path / "records.jsonl"
    overrides = {"RecordFile": str(records)}
    stack = deploy_template(
        KINESIS_TEMPLATE,
        endpoint_url=moto_endpoint,
        stack_name=unique_name,
        parameter_overrides=overrides,
    )
    name = stack.outputs["StreamName"]
    # The same stream (same account, region and name: the same ARN) on kinesis-mock, with
    # records that moto's stream does not have.
    elsewhere = boto3.client(
        "kinesis",
        endpoint_url=kinesis_mock,
        region_name=aws.region_name,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    elsewhere.create_stream(StreamName=name, ShardCount=1)
    elsewhere.get_waiter("stream_exists").wait(StreamName=name)
    keys = item_keys(7)
    elsewhere.put_records(
        StreamName=name, Records=[{"Data": b"{}", "PartitionKey": key} for key in keys]
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock)

    code = main(
        [
            "run",
            "--template",
            str(KINESIS_TEMPLATE),
            "--stack-name",
            unique_name,
            "--exit-when-idle",
            "2",
            "--parameter-overrides",
            f"RecordFile={records}",
        ]
    )

    assert code == 0
    out = capsys.readouterr().out
    assert f"kinesis {kinesis_mock}" in out and f"dynamodb {moto_endpoint}" in out
    handled = [json.loads(line)["pk"] for line in records.read_text().splitlines()]
    assert sorted(handled) == keys
