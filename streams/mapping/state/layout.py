"""The state table's layout (docs/mapping-state.md): one partition per mapping.

- ``sk = "lease"``: who runs the mapping now (`streams.mapping.state.lease`);
- ``sk = "shard#<shard id>"``: the checkpoint and whether the shard is finished;
- ``sk = "metrics#<shard id>"``: counters (``count:<name>``), the last iterator age, the shard's
  state and the last batch's outcome (`streams.mapping.state.table`);
- ``sk = "backfill#<segment>"``: a backfill's scan position (`streams.local.backfill`).

`streams.mapping.state.snapshot` reads it back for the monitor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

__all__ = [
    "COUNT_PREFIX",
    "DEFAULT_TABLE_NAME",
    "LEASE_SK",
    "METRICS_PREFIX",
    "SHARD_PREFIX",
    "MappingId",
    "MappingItems",
    "ensure_table",
    "number",
]

DEFAULT_TABLE_NAME: Final = "streams-local-state"

LEASE_SK: Final = "lease"
SHARD_PREFIX: Final = "shard#"
METRICS_PREFIX: Final = "metrics#"
COUNT_PREFIX: Final = "count:"  # prefix of counter attributes in a metrics item


@dataclass(frozen=True)
class MappingId:
    """One event source mapping: a function (its logical id) and an event source (its ARN)."""

    function: str
    source_arn: str

    @property
    def key(self) -> str:
        # Logical ids are alphanumeric, so the first "#" separates the two parts.
        return f"{self.function}#{self.source_arn}"


def number(value: float) -> str:
    """A number as DynamoDB's JSON writes it: integral values without a fraction."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def ensure_table(client: DynamoDBClient, table_name: str = DEFAULT_TABLE_NAME) -> None:
    """Create the state table if it is missing, and wait until it is active."""
    try:
        client.describe_table(TableName=table_name)
    except client.exceptions.ResourceNotFoundException:
        # Another mapping may create it meanwhile.
        with contextlib.suppress(client.exceptions.ResourceInUseException):
            client.create_table(
                TableName=table_name,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
    client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


class MappingItems:
    """The items of one mapping's partition, read and keyed in one place."""

    def __init__(self, mapping: MappingId, client: DynamoDBClient, table_name: str) -> None:
        self.mapping = mapping
        self.client = client
        self.table_name = table_name

    def _item_key(self, sk: str) -> dict[str, AttributeValueTypeDef]:
        return {"pk": {"S": self.mapping.key}, "sk": {"S": sk}}

    def _mapping_attributes(self) -> dict[str, AttributeValueTypeDef]:
        return {
            "function": {"S": self.mapping.function},
            "eventSourceARN": {"S": self.mapping.source_arn},
        }

    def _get(self, sk: str) -> Mapping[str, Any] | None:
        return self.client.get_item(
            TableName=self.table_name, Key=self._item_key(sk), ConsistentRead=True
        ).get("Item")
