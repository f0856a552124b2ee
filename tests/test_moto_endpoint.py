from __future__ import annotations

import boto3


def test_clients_talk_to_the_embedded_endpoint_on_loopback(
    aws: boto3.Session, moto_endpoint: str, unique_name: str
) -> None:
    assert moto_endpoint.startswith("http://127.0.0.1:")
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    assert unique_name in url
    assert url in sqs.list_queues(QueueNamePrefix=unique_name)["QueueUrls"]
