"""How the load test's target event rate becomes each writer user's pace, and the option checks.

The locustfile asks for ``--events-per-second`` in total, split evenly over the writer users. Each
writer paces itself with the generator's ``RatePacer`` (a credit over elapsed time, so a late
wake-up is caught up with a larger batch) rather than locust's ``constant_throughput``, which never
catches up: at 3,333 events/s on two busy cores its gevent sleeps overran enough to fall 1.8 % short
(3,273/s). Kept apart from the locustfile so the unit tests need not import locust (which
monkey-patches the process with gevent on import).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from generator.pacing import RatePacer

# How far a writer catches up in one transaction after a stall, in batches.
CATCH_UP_BATCHES = 10


def writer_count(users: int, fixed_users: int) -> int:
    """The writers among ``users``: locust places the fixed-count users (the SLA user) first."""
    return max(users - fixed_users, 0)


def writer_pacer(
    events_per_second: float,
    writers: int,
    batch_size: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RatePacer:
    """The pacer of one of ``writers``: ``batch_size`` events a transaction, together ``events_per_second``."""
    if events_per_second <= 0 or writers <= 0 or batch_size <= 0:
        raise ValueError(
            f"need a positive rate, writer count and batch size (got {events_per_second}, {writers}, {batch_size})"
        )
    rate = events_per_second / writers
    return RatePacer(rate, batch_size / rate, CATCH_UP_BATCHES * batch_size, clock, sleep)


def positive_float(text: str) -> float:
    """An argparse ``type``: a number above zero (locust's parser then reports bad input and exits 2)."""
    try:
        value = float(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number above zero."""
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value
