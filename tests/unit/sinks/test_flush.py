"""The flush every sink shares, with a fake sink: outcomes per record, retries, letters, positions."""

import pytest

from sinks.contract import BatchLimits, Outcome, PositionConflict, Retry, RetryPolicy, SinkUnavailable
from sinks.flush import Flusher
from sinks.positions import Position
from sinks.records import DeadLetter, SourcePosition

from .fakes import FakeSink, Letters, change


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def flusher(sink: FakeSink, letters: Letters | None = None, clock: Clock | None = None, owns: bool = True) -> Flusher:
    clock = clock or Clock()
    f = Flusher(sink, letters or Letters(sink.log), ["t"], owns_upstream_letters=owns, clock=clock, sleep=clock.sleep)
    f.load()
    return f


def test_rejected_records_become_letters_with_their_bytes_and_the_rest_is_applied():
    sink = FakeSink([lambda batch: Outcome(rejected={1: "too wide"})])
    letters = Letters(sink.log)
    report = flusher(sink, letters).flush([change(0), change(1), change(2)])
    assert sink.applied == [0, 2]
    [letter] = letters.sent
    assert (letter.position.offset, letter.stage, letter.reason) == (1, "fake", "too wide")
    assert (letter.key, letter.value) == (b'{"id": 1}', b"v1")
    assert report.written == 2 and report.letters == {"fake": 1}
    # The letter is confirmed before the position past its record is stored.
    assert sink.log == ["write 0,1,2", "letters 1", "commit t:0=3"]


def test_retryable_records_are_retried_alone_and_honour_retry_after():
    sink = FakeSink([lambda b: Outcome(retry={0: Retry("429", retry_after_s=7.0)}), lambda b: Outcome()])
    clock = Clock()
    report = flusher(sink, clock=clock).flush([change(0), change(1)])
    assert sink.log == ["write 0,1", "write 0", "commit t:0=2"]
    assert sink.applied == [1, 0] and report.retries == 1
    assert clock.slept == [7.0]


def test_a_bounded_budget_dead_letters_what_is_still_failing():
    down = lambda b: Outcome(retry=dict.fromkeys(range(len(b.records)), Retry("503")))  # noqa: E731
    sink = FakeSink([down] * 100, policy=RetryPolicy(initial_s=1.0, max_backoff_s=4.0, budget_s=10.0))
    letters = Letters(sink.log)
    clock = Clock()
    report = flusher(sink, letters, clock).flush([change(0), change(1)])
    assert [letter.reason for letter in letters.sent] == ["gave up after 10 s of retries: 503"] * 2
    assert sink.applied == [] and sink.log[-1] == "commit t:0=2"
    assert clock.now >= 10.0 and all(s <= 4.0 for s in clock.slept)
    assert report.letters == {"fake": 2}


def test_forever_retries_an_outage_until_it_passes():
    sink = FakeSink([*([lambda b: (_ for _ in ()).throw(SinkUnavailable("refused"))] * 30), lambda b: Outcome()])
    clock = Clock()
    flusher(sink, clock=clock).flush([change(0)])
    assert sink.applied == [0] and len(clock.slept) == 30
    assert max(clock.slept) <= RetryPolicy.forever().max_backoff_s


def test_an_atomic_sink_is_all_or_nothing_and_stores_positions_in_its_write():
    sink = FakeSink([lambda b: Outcome(rejected={0: "bad"})], atomic=True)
    flusher(sink).flush([change(0), change(1)])
    # Nothing of the first attempt was applied; the letter went out before the write that stores.
    assert sink.log == ["write 0,1", "letters 0", "write 1"]
    assert sink.applied == [1] and sink.stored == {"t:0": Position(2)}


def test_a_batch_with_nothing_to_write_still_stores_its_positions():
    sink = FakeSink(atomic=True)
    upstream = DeadLetter(SourcePosition("t", 0, 4), "decode_engagement", "not JSON", b"k", b"{")
    letters = Letters(sink.log)
    flusher(sink, letters).flush([upstream])
    assert sink.log == ["letters 4", "commit t:0=5"] and letters.sent == [upstream]


def test_only_the_owning_lane_produces_upstream_letters():
    sink = FakeSink()
    letters = Letters(sink.log)
    upstream = DeadLetter(SourcePosition("t", 0, 0), "join_content", "content x not found", b"k", b"v")
    flusher(sink, letters, owns=False).flush([upstream, change(1)])
    assert letters.sent == [] and sink.applied == [1] and sink.stored == {"t:0": Position(2)}


def test_replays_are_skipped_against_stored_positions():
    sink = FakeSink()
    sink.stored = {"t:0": Position(2)}
    report = flusher(sink).flush([change(0), change(1), change(2)])
    assert sink.applied == [2] and report.replays == 2


def test_a_position_conflict_reloads_and_writes_only_what_is_left():
    sink = FakeSink(atomic=True)

    def someone_else_wrote_two(batch):
        sink.stored = {"t:0": Position(2)}
        raise PositionConflict("stale")

    sink.outcomes = [someone_else_wrote_two]
    report = flusher(sink).flush([change(0), change(1), change(2)])
    assert sink.log[-1] == "write 2" and sink.applied == [2] and report.conflicts == 1


@pytest.mark.parametrize(
    ("limits", "sizes"), [(BatchLimits(max_records=2), [2, 2, 1]), (BatchLimits(10, 5), [2, 2, 1])]
)
def test_batches_respect_count_and_byte_limits(limits, sizes):
    sink = FakeSink(limits=limits)
    flusher(sink).flush([change(o) for o in range(5)])  # values are 2 bytes each: "v0".."v4"
    writes = [line for line in sink.log if line.startswith("write")]
    assert [len(line.split(" ")[1].split(",")) for line in writes] == sizes


def test_every_sink_produces_join_letters_it_admits_but_only_the_owner_decode_letters():
    # A join letter depends on timing (another lane, or a replay, may find the content): none may be lost.
    join = DeadLetter(SourcePosition("t", 0, 0), "join_content", "content x not found", b"k", b"v", deterministic=False)
    decode = DeadLetter(SourcePosition("t", 0, 1), "decode_engagement", "not JSON", b"k", b"{")
    sink = FakeSink()
    letters = Letters(sink.log)
    flusher(sink, letters, owns=False).flush([join, decode])
    assert letters.sent == [join] and sink.stored == {"t:0": Position(2)}


def test_retried_records_keep_their_offset_order():
    sink = FakeSink([lambda b: Outcome(retry={2: Retry("x"), 0: Retry("x")}), lambda b: Outcome()])
    flusher(sink).flush([change(0), change(1), change(2)])
    assert sink.log[:2] == ["write 0,1,2", "write 0,2"]


def test_a_retry_after_past_the_budget_gives_up_at_once_and_backoff_never_passes_the_budget():
    slow = lambda b: Outcome(retry={0: Retry("429", retry_after_s=30.0)})  # noqa: E731
    sink = FakeSink([slow], policy=RetryPolicy(initial_s=1.0, max_backoff_s=4.0, budget_s=10.0))
    letters = Letters(sink.log)
    clock = Clock()
    flusher(sink, letters, clock).flush([change(0)])
    assert [letter.reason for letter in letters.sent] == ["gave up: asked to wait 30 s, past the 10 s budget: 429"]
    assert clock.slept == []

    down = lambda b: Outcome(retry={0: Retry("503")})  # noqa: E731
    sink = FakeSink([down] * 100, policy=RetryPolicy(initial_s=1.0, max_backoff_s=4.0, budget_s=10.0))
    clock = Clock()
    flusher(sink, Letters(sink.log), clock).flush([change(0)])
    assert clock.now == 10.0  # the last sleep was cut to end at the budget
