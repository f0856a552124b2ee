"""What a batch keeps in memory: decoded images go with their record, and a handler's cyclic
garbage is collected while a warm process handles invocation after invocation."""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from streams import StreamProcessor
from streams.records import parse_records
from tests.factories import MemorySink, dynamodb_event, dynamodb_record, kinesis_record


def make(handler: Any, **settings: Any) -> StreamProcessor:
    return StreamProcessor(
        handler,
        dead_letters=MemorySink(),
        logger=Logger(service="test", stream=io.StringIO()),
        **settings,
    )


def test_a_handled_records_decoded_images_are_let_go_before_the_batch_ends() -> None:
    # A 6 MB event decoded in full is many times that in objects: the batch must not keep
    # every record's images until it ends.
    previous: list[Any] = []  # the images of the record handled before
    held_by_others: list[list[Any]] = []

    def handle(record: Any) -> None:
        held_by_others.extend(
            [referrer for referrer in gc.get_referrers(image) if referrer is not previous]
            for image in previous
        )
        previous[:] = [record.new_image, record.keys]

    make(handle).process(dynamodb_event(5))

    assert held_by_others == [[]] * 8


@pytest.mark.parametrize("handler_kind", ["threads", "async"])
def test_records_handled_in_parallel_let_go_of_their_images_too(handler_kind: str) -> None:
    records = parse_records(
        {"Records": [dynamodb_record(n, child=f"c-{n % 3}") for n in range(1, 10)]}
    )
    images: list[Any] = []

    def bind(record: Any) -> None:
        images.extend([record.new_image, record.keys])

    async def bind_async(record: Any) -> None:
        bind(record)

    processor = make(bind if handler_kind == "threads" else bind_async, concurrency=4)
    assert processor.run(records).done == 9

    # The views are still here (held by `records`); what they decoded is no longer theirs.
    held = [referrer for image in images for referrer in gc.get_referrers(image)]
    assert [referrer for referrer in held if referrer is not images] == []


def test_a_records_images_read_after_it_is_done_decode_again_to_the_same_values() -> None:
    records = parse_records(dynamodb_event(3))
    during: list[dict[str, Any]] = []

    def handle(record: Any) -> None:
        image = record.new_image
        assert record.new_image is image  # kept while the record is handled
        during.append(dict(image))

    result = make(handle).run(records)

    assert result.done == 3
    assert [dict(record.new_image) for record in records] == during


def test_a_kinesis_records_data_reads_the_same_after_it_is_done() -> None:
    records = parse_records({"Records": [kinesis_record(1, b'{"n": 7}')]})
    make(lambda record: record.json()).run(records)
    assert records[0].json() == {"n": 7}  # type: ignore[union-attr]


# --- the collector ------------------------------------------------------------------------------


class Cycle:
    """Half of a reference cycle; counts the cycles that are still alive."""

    alive = 0

    def __init__(self) -> None:
        Cycle.alive += 1
        self.other: Cycle | None = None

    def __del__(self) -> None:
        Cycle.alive -= 1


def test_cycles_a_handler_leaves_behind_are_collected_by_the_next_young_collection() -> None:
    # Freezing the heap around a batch (gc.freeze ... gc.unfreeze) would move these cycles,
    # young when the next batch starts, into the oldest generation, out of reach of the young
    # collections a warm process runs all the time.
    def make_a_cycle(record: Any) -> None:
        first, second = Cycle(), Cycle()
        first.other, second.other = second, first

    processor = make(make_a_cycle)
    gc.collect()
    before = Cycle.alive
    processor.process(dynamodb_event(3))
    make(lambda record: None).process(dynamodb_event(3))
    gc.collect(1)
    assert Cycle.alive == before


WARM_PROCESS = """
import collections, contextlib, io
import pytest
from aws_lambda_powertools import Logger
from streams import StreamProcessor
from tests.factories import MemorySink, dynamodb_event

class Node:
    alive = 0
    def __init__(self):
        Node.alive += 1
        self.other = None
    def __del__(self):
        Node.alive -= 1

recent = collections.deque(maxlen=2000)  # each cycle lives long enough to grow old

def handle(record):
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: only the collector frees it
    recent.append(first)

processor = StreamProcessor(
    handle, dead_letters=MemorySink(), logger=Logger(service="t", stream=io.StringIO())
)
event = dynamodb_event(20)
largest_drop = previous = 0
with contextlib.redirect_stdout(io.StringIO()):  # the metrics
    for _ in range(6000):  # invocations of a warm process; the collector left to its own pace
        processor.process(event)
        largest_drop = max(largest_drop, previous - Node.alive)
        previous = Node.alive
print(largest_drop)
"""


def test_a_handlers_cyclic_garbage_is_collected_across_warm_invocations() -> None:
    # Cycles that live a while reach the oldest generation, which only a full collection
    # frees; the collector runs one once enough has grown old since the last. gc.freeze at
    # each batch (with gc.unfreeze at its end) resets the counts that lead to it: not one
    # full collection then, in 6,000 invocations, and every cycle stays.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WARM_PROCESS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    largest_drop = int(done.stdout)
    assert largest_drop > 2 * 4000  # old cycles freed at once: more than the 2,000 kept alive
