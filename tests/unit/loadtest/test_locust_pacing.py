"""The load test's rate split and option checks (loadtest.locust_pacing)."""

from __future__ import annotations

import argparse

import pytest

from loadtest.locust_pacing import CATCH_UP_BATCHES, positive_float, positive_int, writer_count, writer_pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_seed_004_rate_split_over_seven_writers() -> None:
    # 8 users = 1 SLA user + 7 writers, 100 events a transaction: 3,333 events/s in total.
    writers = writer_count(8, 1)
    clock = FakeClock()
    pacer = writer_pacer(3333, writers, 100, clock, clock.sleep)
    assert writers == 7
    assert pacer.rate_per_s == pytest.approx(3333 / 7)
    written = 0
    while clock.now < 60:
        written += pacer.next_batch()
    # Each writer's share of a minute, to the event (the pacer stops once a batch is due).
    assert written == int(3333 / 7 * clock.now)
    assert abs(written - 3333 / 7 * 60) <= 100


def test_a_stalled_writer_catches_up_in_larger_batches() -> None:
    clock = FakeClock()
    pacer = writer_pacer(1000, 2, 50, clock, clock.sleep)
    assert pacer.next_batch() == 50
    clock.now += 2.0  # a stall of 2 s: 1,000 events due, capped at CATCH_UP_BATCHES batches
    assert pacer.next_batch() == CATCH_UP_BATCHES * 50
    assert pacer.next_batch() == 500
    assert pacer.next_batch() == 50


def test_no_writers_when_only_fixed_users() -> None:
    assert writer_count(1, 1) == 0
    assert writer_count(0, 1) == 0


@pytest.mark.parametrize(("rate", "writers", "batch"), [(0, 2, 100), (-1, 2, 100), (100, 0, 100), (100, 2, 0)])
def test_pacer_refuses_non_positive_input(rate: float, writers: int, batch: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        writer_pacer(rate, writers, batch)


def test_option_types() -> None:
    assert positive_float("3,333") == 3333.0
    assert positive_float("0.5") == 0.5
    assert positive_int("1_000") == 1000
    for bad in ("0", "-3", "nan", "inf", "fast"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)
    for bad in ("0", "-1", "2.5", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_int(bad)
