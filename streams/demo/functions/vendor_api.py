"""The vendor-api scenario's function: each event of a Kinesis stream, posted to a vendor's
API that allows R calls a second, through a fleet-wide `RateLimit`.

Every invocation of every shard shares one budget (the rate-limit table's item), so however many
shards, batches and threads call at once, the vendor sees at most R calls a second plus the
burst. A record whose token does not come within the invocation's time is retried later
(`Transient`: the backlog shows as iterator age); a 429 or 503 pauses the whole fleet for the
vendor's `Retry-After`, and the record is retried.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

from streams import KinesisRecord, Poison, RateLimit, StreamProcessor, Transient

_concurrency = int(os.environ.get("STREAMS_CONCURRENCY", "1"))
_vendor = os.environ["VENDOR_URL"].rstrip("/") + "/events"
# The vendor is on this machine in the demo; never reach it through a proxy.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# The vendor's rate, and no burst of our own: a call leaves a little after its token (the
# UpdateItem's answer, the thread's wake-up), so calls can arrive bunched; the vendor's own
# burst allowance is the margin that absorbs them.
limit = RateLimit(
    os.environ["RATE_LIMIT_TABLE"],
    key="vendor",
    rate=float(os.environ["VENDOR_RATE"]),
    burst=1,
    client=boto3.client("dynamodb", config=Config(max_pool_connections=max(10, _concurrency))),
)


def post_event(record: KinesisRecord) -> None:
    try:
        event = record.json()
    except ValueError:
        raise Poison("the record is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("eventId"), str):
        raise Poison("the record is not an event with an eventId")
    limit.acquire()  # waits for the fleet's next token, or raises Transient
    request = urllib.request.Request(
        _vendor,
        data=record.data,  # the event as written (json() reads its numbers as Decimal)
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _opener.open(request, timeout=5):
            return
    except urllib.error.HTTPError as error:
        if error.code in (429, 503):
            raise limit.refused(error.code, error.headers.get("Retry-After")) from None
        if error.code >= 500:
            raise Transient(f"the vendor answered HTTP {error.code}") from None
        raise Poison(f"the vendor refused the event: HTTP {error.code}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise Transient(f"the vendor did not answer: {type(error).__name__}") from None


processor = StreamProcessor(post_event, concurrency=_concurrency)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    return processor.process(event, context)
