"""The scenarios' verdicts: what each story's summary may call a success."""

from __future__ import annotations

from streams.demo.functions.tickets import STATUSES
from streams.demo.ticket_queue import verify as verify_tickets
from streams.demo.vendor import VendorCounts
from streams.demo.vendor_api import Event
from streams.demo.vendor_api import verify as verify_vendor

GOOD = next(iter(STATUSES))
EVENTS = [Event("k1", b"{}", "e1"), Event("k2", b"{}", "e2"), Event("k3", b"x", None)]
POSITIONS = [("shard-0", "1"), ("shard-1", "2"), ("shard-0", "3")]


def counts(per_second: dict[int, int], accepted: dict[str, int]) -> VendorCounts:
    return VendorCounts(per_second=per_second, accepted=accepted, too_many=0, unavailable=0)


def test_the_vendor_story_holds_when_every_event_arrives_and_no_second_exceeds_the_limit() -> None:
    verdict = verify_vendor(
        EVENTS, POSITIONS, counts({0: 30, 1: 2}, {"e1": 1, "e2": 1}), {("shard-0", "3")}, 30
    )
    assert verdict.ok and verdict.lost == 0 and verdict.parked == 1


def test_one_second_over_the_vendors_limit_fails_the_vendor_story_though_nothing_is_lost() -> None:
    verdict = verify_vendor(
        EVENTS, POSITIONS, counts({0: 31}, {"e1": 1, "e2": 1}), {("shard-0", "3")}, 30
    )
    assert verdict.lost == 0
    assert not verdict.limit_held and not verdict.ok


def test_an_event_the_vendor_never_accepted_or_a_malformed_one_not_parked_is_lost() -> None:
    verdict = verify_vendor(EVENTS, POSITIONS, counts({0: 1}, {"e1": 2}), set(), 30)
    assert verdict.lost == 2 and verdict.repeats == 1 and not verdict.ok


def update(ticket: str, version: int, status: str = GOOD) -> dict[str, object]:
    return {"ticketId": ticket, "version": version, "status": status}


def test_a_tickets_changes_arriving_in_another_order_than_written_fail_the_ticket_story() -> None:
    written = [update("t1", 1), update("t1", 2), update("t2", 1)]
    in_order = verify_tickets(written, [update("t1", 1), update("t2", 1), update("t1", 2)], set())
    swapped = verify_tickets(written, [update("t1", 2), update("t1", 1), update("t2", 1)], set())
    assert in_order.ok and in_order.out_of_order == 0
    assert swapped.lost == 0 and swapped.out_of_order == 1 and not swapped.ok


def test_a_change_missing_from_the_queue_is_lost_and_a_repeat_is_counted() -> None:
    written = [update("t1", 1), update("t1", 2), update("t1", 3, status="??")]
    verdict = verify_tickets(written, [update("t1", 1), update("t1", 1)], {("t1", 3)})
    assert verdict.lost == 1 and verdict.duplicates == 1 and verdict.parked == 1
    assert verdict.lost_changes == ("t1 v2",)
