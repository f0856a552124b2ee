"""The demo's verdict comes from its outputs, and counts every update exactly once."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams.cli import main
from streams.demo.burst import verify
from streams.demo.generate import generate_updates

ROOT = Path(__file__).resolve().parent.parent


def update(
    child: str, version: int, status: str = "nice", street: str = "1 Main"
) -> dict[str, Any]:
    return {
        "childId": child,
        "version": version,
        "status": status,
        "region": "north",
        "address": {"street": street, "city": "Oslo"},
    }


def stored(source: dict[str, Any]) -> dict[str, Any]:
    """The delivery table's item for an update, as a scan decodes it."""
    return {
        "childId": source["childId"],
        "status": source["status"],
        "region": source["region"],
        "address": source["address"],
        "sequenceNumber": "0" * 40,
        "deleted": False,
    }


def poison(child: str, version: int) -> dict[str, Any]:
    return update(child, version, status="grumpy")


def test_everything_delivered_or_parked_is_nothing_lost() -> None:
    updates = [
        update("a", 1, street="1"),
        poison("a", 2),
        update("a", 3, street="3"),
        update("b", 1),
    ]
    verdict = verify(
        updates,
        delivered={"a": stored(updates[2]), "b": stored(updates[3])},
        parked=[{"childId": "a", "version": Decimal(2)}],
    )
    assert (verdict.valid, verdict.malformed, verdict.delivered, verdict.parked) == (3, 1, 3, 1)
    assert verdict.lost == 0 and verdict.ok


def test_a_child_whose_newest_valid_update_is_missing_loses_its_valid_updates() -> None:
    updates = [update("a", 1, street="1"), update("a", 2, street="2"), update("b", 1)]
    verdict = verify(
        updates, delivered={"a": stored(updates[0]), "b": stored(updates[2])}, parked=[]
    )
    assert verdict.lost == 2
    assert verdict.lost_children == ("a",)
    assert not verdict.ok


def test_a_malformed_update_neither_parked_nor_superseded_is_lost() -> None:
    updates = [update("a", 1), poison("a", 2)]
    verdict = verify(updates, delivered={"a": stored(updates[0])}, parked=[])
    assert (verdict.parked, verdict.superseded, verdict.lost) == (0, 0, 1)


def test_a_malformed_update_followed_by_a_newer_one_counts_as_superseded() -> None:
    updates = [poison("a", 1), update("a", 2)]
    verdict = verify(updates, delivered={"a": stored(updates[1])}, parked=[])
    assert (verdict.superseded, verdict.lost) == (1, 0)


def test_writes_refused_for_good_are_reported_not_counted_as_lost() -> None:
    updates = [update("a", 1), update("a", 2, street="2")]
    verdict = verify(updates, delivered={"a": stored(updates[0])}, parked=[], failed={1})
    assert (verdict.failed_writes, verdict.lost) == (1, 0)


def test_consecutive_generated_updates_of_a_child_read_differently_once_projected() -> None:
    streets: dict[str, list[str]] = {}
    for one in generate_updates(3000, children=300, seed=1):
        address = one["address"]
        assert isinstance(address, dict)
        streets.setdefault(str(one["childId"]), []).append(str(address["street"]))
    for history in streets.values():
        assert all(a != b for a, b in itertools.pairwise(history))


def test_a_small_demo_delivers_or_parks_every_update_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "demo.png"
    code = main(
        [
            "demo",
            "--updates",
            "300",
            "--children",
            "80",
            "--poison-rate",
            "0.05",
            "--template",
            str(ROOT / "template.yaml"),
            "--chart",
            str(chart),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "lost                          0" in out
    assert int(out.split("updates written")[1].split()[0]) == 300  # the trickle's rest included
    parked = int(out.split("parked (poison)")[1].split()[0])
    malformed = int(out.split("malformed")[1].split()[0])
    assert malformed > 0 and parked == malformed
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demos_lost_0_is_confirmed_by_reading_its_outputs_independently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's `verify()` is not the judge of itself: while the endpoint is still up, this
    test reads the delivery table and the dead-letter queue with boto3 alone and checks, against
    the updates the demo wrote (the same generator, the same seed), that every child holds its
    newest well-formed update and every malformed update is parked, and nothing else is."""
    import json as json_module

    import boto3

    from streams.demo.burst import Demo

    monkeypatch.chdir(tmp_path)
    updates, children, poison_rate, seed = 300, 80, 0.05, 11
    seen: dict[str, Any] = {}

    def read_outputs(result: Any, endpoint: Any) -> None:
        session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        cloudformation = session.client("cloudformation", endpoint_url=endpoint.url)
        (stack,) = cloudformation.describe_stacks()["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        dynamodb = session.client("dynamodb", endpoint_url=endpoint.url)
        rows = [
            item
            for page in dynamodb.get_paginator("scan").paginate(
                TableName=outputs["DeliveryTableName"], ConsistentRead=True
            )
            for item in page["Items"]
        ]
        sqs = session.client("sqs", endpoint_url=endpoint.url)
        parked = []
        while True:
            messages = sqs.receive_message(
                QueueUrl=outputs["DeadLetterQueueUrl"], MaxNumberOfMessages=10
            ).get("Messages", [])
            if not messages:
                break
            parked.extend(json_module.loads(m["Body"]) for m in messages)
        seen.update(rows=rows, parked=parked, failed=list(result.report.failed))

    Demo(
        template=ROOT / "template.yaml",
        updates=updates,
        children=children,
        poison_rate=poison_rate,
        seed=seed,
        chart=None,
        say=lambda line: None,
    ).run(after=read_outputs)

    assert seen["failed"] == []  # no write refused: every update reached the table
    written = list(generate_updates(updates, children=children, poison_rate=poison_rate, seed=seed))
    well_formed = [u for u in written if u["status"] in ("nice", "naughty") and "address" in u]
    newest: dict[str, dict[str, Any]] = {}
    for u in well_formed:
        newest[str(u["childId"])] = u
    delivered = {
        row["childId"]["S"]: (
            row["status"]["S"],
            row["address"]["M"]["street"]["S"],
            row["address"]["M"]["city"]["S"],
        )
        for row in seen["rows"]
        if not row.get("deleted", {}).get("BOOL", False)
    }
    expected = {
        child: (u["status"], u["address"]["street"], u["address"]["city"])
        for child, u in newest.items()
    }
    assert delivered == expected
    parked = {
        (
            message["record"]["dynamodb"]["NewImage"]["childId"]["S"],
            int(message["record"]["dynamodb"]["NewImage"]["version"]["N"]),
        )
        for message in seen["parked"]
    }
    malformed = [u for u in written if u not in well_formed]
    assert malformed, "the seed must give some malformed updates"
    # Every record reaches the stream (no coalescing), so every malformed one is parked.
    assert parked == {(str(u["childId"]), int(str(u["version"]))) for u in malformed}
