"""The hydrate function: the on-failure queue's metadata records, back to full parked records.

Triggered by the on-failure queue, so that recovering the records Lambda gave up on does not
depend on someone running `streams dlq hydrate` within the stream's 24 hours. Same code as the
command (`streams.hydrate`). A message whose records could not all be parked, or whose range
could not be read to its end (throttled, failing), is reported as a batch item failure and
comes back later; records the stream no longer has are logged as lost.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from streams.deadletter import SqsDeadLetterQueue
from streams.hydrate import Hydrator, parse_on_failure

logger = Logger()
hydrator = Hydrator(SqsDeadLetterQueue.from_environment())


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    failures: list[dict[str, str]] = []
    for message in event["Records"]:
        message_id = message["messageId"]
        try:
            batch = parse_on_failure(message["body"])
            outcome = hydrator.hydrate(batch)
        except Exception:
            logger.exception("cannot hydrate an on-failure record", extra={"messageId": message_id})
            failures.append({"itemIdentifier": message_id})
            continue
        fields = {
            "messageId": message_id,
            "shardId": batch.shard_id,
            "startSequenceNumber": batch.start_sequence_number,
            "endSequenceNumber": batch.end_sequence_number,
            "parked": outcome.parked,
        }
        if outcome.expired:
            logger.error(
                "records left the stream before they could be hydrated",
                extra={**fields, "expired": outcome.expired},
            )
        if outcome.unfinished:
            logger.warning(
                "reading the records back did not finish (throttled or failing): the on-failure "
                "record comes back for another try",
                extra=fields,
            )
        if not outcome.complete:
            failures.append({"itemIdentifier": message_id})
        else:
            logger.info("hydrated", extra=fields)
    return {"batchItemFailures": failures}
