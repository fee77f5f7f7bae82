import pytest

from generator.pacing import RatePacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_emits_a_tick_worth_per_batch_and_holds_the_rate():
    clock = FakeClock()
    pacer = RatePacer(3333.0, tick_s=0.1, max_batch=5000, clock=clock, sleep=clock.sleep)
    batches = [pacer.next_batch() for _ in range(100)]
    assert all(333 <= b <= 340 for b in batches)
    elapsed = clock.now - 1000.0
    assert sum(batches) / elapsed == pytest.approx(3333.0, rel=0.01)


def test_catches_up_after_a_stall_but_never_beyond_max_batch():
    clock = FakeClock()
    pacer = RatePacer(1000.0, tick_s=0.1, max_batch=500, clock=clock, sleep=clock.sleep)
    pacer.next_batch()
    clock.now += 2.0  # the database stalled for two seconds
    assert pacer.backlog > 1500
    assert pacer.next_batch() == 500
    assert pacer.backlog > 1000


def test_low_rates_emit_single_rows():
    clock = FakeClock()
    pacer = RatePacer(2.0, tick_s=0.1, clock=clock, sleep=clock.sleep)
    assert [pacer.next_batch() for _ in range(4)] == [1, 1, 1, 1]
    assert clock.now - 1000.0 == pytest.approx(2.0, abs=0.01)


def test_rate_must_be_positive():
    with pytest.raises(ValueError):
        RatePacer(0.0)
