"""A wrong sequence mark through the flush every sink shares: applied, stored, reported once."""

import msgspec

from sinks.contract import PositionConflict
from sinks.flush import Flusher
from sinks.positions import Mark, Position
from sinks.records import SourcePosition

from .fakes import FakeSink, Letters, change

T0 = 1_800_000_000_000


def at(offset: int, sequence, ts: int, key: bytes | None = None):
    return msgspec.structs.replace(change(offset, sequence=sequence, key=key), commit_ts_ms=ts)


def flusher(sink: FakeSink, now_ms: int) -> Flusher:
    f = Flusher(
        sink,
        Letters(),
        ["t"],
        owns_upstream_letters=True,
        sleep=lambda _: None,
        wall_clock=lambda: now_ms / 1000,
        sequence_tolerance_ms=2_000,
    )
    f.load()
    return f


def test_changes_after_a_restore_are_applied_and_the_regression_reported():
    sink = FakeSink()
    sink.stored = {"t:0": Position(10, Mark(600, 610, frozenset(), T0, (500, 510)))}
    later = T0 + 600_000
    resend = at(12, (300, 310), T0, b'{"id": 10}')
    report = flusher(sink, later).flush([at(10, (300, 310), later), at(11, (300, 320), later), resend])
    assert sink.applied == [10, 11]  # 12 repeats 10's sequence with an earlier commit time: a re-send
    assert report.resends == 1 and report.written == 2
    [regression] = report.regressions
    assert (regression.partition, regression.kind, regression.offset) == ("t:0", "later_commit", 10)
    assert (regression.mark, regression.sequence) == ((600, 610), (300, 310))
    mark = sink.stored["t:0"].mark
    assert (sink.stored["t:0"].next_offset, mark.commit_lsn, mark.lsn, mark.prev) == (13, 300, 320, (300, 310))


def test_a_conflict_does_not_report_a_regression_twice():
    sink = FakeSink()
    calls = []

    def write(batch):
        calls.append(len(batch.records))
        if len(calls) == 1:
            raise PositionConflict("another write landed first")
        return FakeSink.write(sink, batch)

    sink.write = write  # type: ignore[method-assign]
    sink.stored = {"t:0": Position(10, Mark(600, 610, frozenset(), T0, (500, 510)))}
    report = flusher(sink, T0 + 600_000).flush([at(10, (550, 560), T0 + 1)])
    assert calls == [1, 1] and report.conflicts == 1
    assert [r.kind for r in report.regressions] == ["unseen_gap"]


def test_the_sink_step_counts_regressions_by_sink_partition_and_kind():
    from prometheus_client import REGISTRY

    from sinks.base import SinkWriteFn

    sink = FakeSink()
    sink.name = "regression-fake"  # type: ignore[misc]
    sink.stored = {"t:3": Position(10, Mark(600, 610, frozenset(), T0, (500, 510)))}
    fn = SinkWriteFn(lambda: sink, Letters, ["t"], max_latency_ms=10_000, sequence_tolerance_ms=2_000)
    fn.setup()
    fn.start_bundle()
    fn.process(msgspec.structs.replace(at(10, (550, 560), T0 + 1), position=SourcePosition("t", 3, 10)))
    fn.finish_bundle()
    fn.teardown()
    labels = {"sink": "regression-fake", "partition": "t:3", "kind": "unseen_gap"}
    assert REGISTRY.get_sample_value("engagement_sink_sequence_regressions_total", labels) == 1
    assert sink.applied == [10]
