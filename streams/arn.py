"""Amazon Resource Names, read in one place: `arn:partition:service:region:account:resource`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from streams.records import EventSource

__all__ = ["Arn"]

_DYNAMODB_STREAM = re.compile(r"table/[^/]+/stream/[^/]+")
_KINESIS_STREAM = re.compile(r"stream/[^/]+")


@dataclass(frozen=True)
class Arn:
    """The fields of an ARN. `resource` is everything after the account (it may hold colons)."""

    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, text: str) -> Arn:
        """Raises `ValueError` for text that is not an ARN."""
        fields = text.split(":", 5)
        if len(fields) != 6 or fields[0] != "arn":
            raise ValueError(f"not an ARN: {text!r}")
        return cls(*fields[1:])

    @classmethod
    def of(cls, text: str) -> Arn | None:
        """The ARN, or None for text that is not one."""
        try:
            return cls.parse(text)
        except ValueError:
            return None

    @property
    def name(self) -> str:
        """The resource's own name: a queue's or topic's, a stream's, a function's."""
        if self.service in {"sqs", "sns", "s3"}:
            return self.resource
        if self.service == "lambda":  # function:NAME or function:NAME:QUALIFIER
            return self.resource.split(":")[1] if ":" in self.resource else self.resource
        if self.service == "dynamodb":  # table/NAME[/stream/LABEL]
            return self.resource.split("/")[1] if "/" in self.resource else self.resource
        return self.resource.rpartition("/")[2]

    @property
    def stream_source(self) -> EventSource | None:
        """`aws:dynamodb` for a table's stream, `aws:kinesis` for a Kinesis stream, else None."""
        if self.service == "dynamodb" and _DYNAMODB_STREAM.fullmatch(self.resource):
            return "aws:dynamodb"
        if self.service == "kinesis" and _KINESIS_STREAM.fullmatch(self.resource):
            return "aws:kinesis"
        return None

    @property
    def is_queue(self) -> bool:
        return self.service == "sqs" and bool(self.resource)

    def __str__(self) -> str:
        return ":".join(
            ("arn", self.partition, self.service, self.region, self.account, self.resource)
        )
