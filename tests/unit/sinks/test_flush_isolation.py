"""A record that makes a sink's write raise something outside the contract is isolated and
dead-lettered alone; the records around it are applied, and nothing fails the flush."""

import pytest

from sinks.contract import Batch, Fenced, Outcome
from sinks.flush import ISOLATED_TRIES, Flusher
from sinks.positions import Position

from .fakes import FakeSink, Letters, change


def poison_at(offset: int, error: Exception):
    """An outcome that raises ``error`` whenever the batch holds the record at ``offset``."""

    def outcome(batch: Batch) -> Outcome:
        if any(r.position.offset == offset for r in batch.records):
            raise error
        return Outcome()

    return outcome


def flush(sink: FakeSink, items: list) -> tuple[Letters, list[float]]:
    letters = Letters(sink.log)
    slept: list[float] = []
    f = Flusher(sink, letters, ["t"], owns_upstream_letters=True, sleep=slept.append)
    f.load()
    f.flush(items)
    return letters, slept


@pytest.mark.parametrize("atomic", [False, True])
def test_one_poison_record_is_dead_lettered_and_every_other_record_applied_once(atomic):
    sink = FakeSink([poison_at(5, RecursionError("maximum recursion depth exceeded"))] * 100, atomic=atomic)
    letters, slept = flush(sink, [change(i) for i in range(10)])
    assert sorted(sink.applied) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert len(sink.applied) == 9  # none twice
    [letter] = letters.sent
    assert (letter.position.offset, letter.stage, letter.value) == (5, "fake", b"v5")
    assert letter.reason == "fake raised RecursionError: maximum recursion depth exceeded"
    assert sink.stored == {"t:0": Position(10)}
    assert len(slept) == ISOLATED_TRIES - 1  # the lone record was tried again before its letter


def test_a_failure_that_goes_away_is_not_the_records_and_nothing_is_dead_lettered():
    calls = []

    def once(batch: Batch) -> Outcome:
        calls.append(len(batch.records))
        if len(calls) <= 3:  # the whole batch, then its first half, then the lone record once
            raise KeyError("flaky")
        return Outcome()

    sink = FakeSink([once] * 100)
    letters, _ = flush(sink, [change(0), change(1)])
    assert letters.sent == []
    assert sorted(sink.applied) == [0, 1] and sink.stored == {"t:0": Position(2)}


def test_signals_of_the_contract_are_not_isolated():
    sink = FakeSink([poison_at(0, Fenced("newer instance"))])
    with pytest.raises(Fenced):
        flush(sink, [change(0), change(1)])
    assert sink.applied == [] and sink.stored == {}
