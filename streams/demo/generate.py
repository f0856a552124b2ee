"""Synthetic naughty-and-nice updates for the worked example's source table.

`streams write --generate N` writes them, and the demo reuses `generate_updates`. Each update is a
whole item of the source table, whose partition key is `childId` (a string)::

    {"childId": "child-000042", "version": 3, "name": "Ada", "status": "nice",
     "region": "north", "address": {"street": "12 Birch Lane", "city": "Tromsø", "country": "NO"}}

A child gets several updates, in order: its `version` counts them (1, 2, ...), so after the last
update is written the table holds each child at its highest version. Children move house: the
street number changes with every update, so each update of a child reads differently in the
delivery table, which is how the demo tells the newest one from older ones. A `poison_rate`
fraction of the updates are malformed the way the processor parks as poison: a `status` that is
neither "nice" nor "naughty", or no `address` at all.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

STATUSES = ("nice", "naughty")
"""The statuses the processor accepts; anything else is poison."""

_UNKNOWN_STATUSES = ("grumpy", "unknown", "NICE!!", "")
_NAMES = ("Ada", "Bjørn", "Chidi", "Dilnoza", "Emil", "Farah", "Grete", "Hiro", "Ines", "Jonas")
_REGIONS = {
    "north": (("Tromsø", "NO"), ("Rovaniemi", "FI"), ("Kiruna", "SE")),
    "west": (("Galway", "IE"), ("Porto", "PT"), ("Brest", "FR")),
    "east": (("Tartu", "EE"), ("Kraków", "PL"), ("Varna", "BG")),
    "south": (("Cádiz", "ES"), ("Bari", "IT"), ("Chania", "GR")),
}
_STREETS = ("Birch Lane", "Harbour Road", "Mill Street", "Chapel Row", "Station Hill")


def generate_updates(
    n: int, *, children: int | None = None, poison_rate: float = 0.0, seed: int = 0
) -> Iterator[dict[str, object]]:
    """Yield `n` updates spread over `children` children (default: about four updates each).

    The same arguments always yield the same updates. Which child each update belongs to does
    not depend on `poison_rate`, so runs that differ only in it touch the same children.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, not {n}")
    if not 0.0 <= poison_rate <= 1.0:
        raise ValueError(f"poison_rate is a fraction between 0 and 1, not {poison_rate}")
    child_count = max(1, n // 4) if children is None else children
    if child_count < 1:
        raise ValueError(f"children must be 1 or more, not {child_count}")
    rng = random.Random(seed)
    versions = [0] * child_count
    for _ in range(n):
        child = rng.randrange(child_count)
        versions[child] += 1
        status = rng.choice(STATUSES)
        poisoned = rng.random() < poison_rate
        missing_address = rng.random() < 0.5
        if poisoned and not missing_address:
            status = rng.choice(_UNKNOWN_STATUSES)
        update = _child(child, versions[child]) | {"version": versions[child], "status": status}
        if poisoned and missing_address:
            del update["address"]
        yield update


def _child(child: int, version: int) -> dict[str, object]:
    """A child's name, region and address at its `version`-th update (only the street number
    changes between updates)."""
    region = tuple(_REGIONS)[child % len(_REGIONS)]
    city, country = _REGIONS[region][child // len(_REGIONS) % len(_REGIONS[region])]
    return {
        "childId": f"child-{child:06d}",
        "name": _NAMES[child % len(_NAMES)],
        "region": region,
        "address": {
            "street": f"{(child + version) % 97 + 1} {_STREETS[child % len(_STREETS)]}",
            "city": city,
            "country": country,
        },
    }
