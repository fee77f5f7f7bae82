"""The sink driver with a fake sink: retries transient errors, dead-letters permanent ones."""

from pipeline.model import DeadLetter, EnrichedChange, SourcePosition
from sinks.base import DEAD_LETTER, PermanentRecordError, SinkUnavailable, SinkWriteFn


class FakeSink:
    name = "fake"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.written: list[list[EnrichedChange]] = []

    def open(self) -> None:
        pass

    def write(self, batch):
        if self.failures:
            raise self.failures.pop(0)
        self.written.append(list(batch))

    def positions(self):
        return {}

    def close(self) -> None:
        pass


def item(offset: int) -> EnrichedChange:
    return EnrichedChange(SourcePosition("t", 0, offset), 0, ())


def run(fn: SinkWriteFn, items: list[EnrichedChange]) -> list:
    fn.setup()
    fn.start_bundle()
    out = []
    for element in items:
        out += list(fn.process(element) or [])
    out += list(fn.finish_bundle() or [])
    return out


def test_transient_errors_are_retried_until_they_pass():
    sink = FakeSink([SinkUnavailable("down")] * 5)
    slept: list[float] = []
    out = run(SinkWriteFn(lambda: sink, sleep=slept.append, max_latency_ms=10_000), [item(1), item(2)])
    assert out == [] and len(slept) == 5
    assert [[i.position.offset for i in batch] for batch in sink.written] == [[1, 2]]
    assert slept == sorted(slept) or max(slept) <= 5.0  # backoff grows, capped


def test_permanent_errors_go_to_the_dead_letter_output_and_the_rest_is_written():
    sink = FakeSink([PermanentRecordError("value too large", [SourcePosition("t", 0, 2)])])
    out = run(SinkWriteFn(lambda: sink, sleep=lambda _: None, max_latency_ms=10_000), [item(1), item(2), item(3)])
    assert [[i.position.offset for i in batch] for batch in sink.written] == [[1, 3]]
    assert len(out) == 1 and out[0].tag == DEAD_LETTER
    letter = out[0].value.value  # a windowed value out of finish_bundle
    assert isinstance(letter, DeadLetter) and letter.reason == "value too large"


def test_flushes_by_size_within_a_bundle():
    sink = FakeSink([])
    run(SinkWriteFn(lambda: sink, max_buffer=2, max_latency_ms=10_000), [item(i) for i in range(5)])
    assert [len(batch) for batch in sink.written] == [2, 2, 1]


def test_a_flush_runs_beside_the_bundle_thread_and_the_bundle_waits_for_it():
    import threading

    started, release = threading.Event(), threading.Event()

    class SlowSink(FakeSink):
        def write(self, batch):
            self.thread = threading.current_thread().name
            started.set()
            assert release.wait(5)
            super().write(batch)

    sink = SlowSink([])
    fn = SinkWriteFn(lambda: sink, max_latency_ms=0)
    fn.setup()
    fn.start_bundle()
    assert list(fn.process(item(1))) == []  # returns while the write is still blocked
    assert started.wait(5) and sink.written == []
    release.set()
    assert list(fn.finish_bundle()) == []
    assert sink.written == [[item(1)]] and sink.thread != threading.current_thread().name
    fn.teardown()


def test_metrics_of_flushes_on_the_writer_thread_are_reported():
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter

    pipeline = beam.Pipeline()
    _ = (
        pipeline
        | beam.Create([item(1), item(2), item(3)])
        | beam.ParDo(SinkWriteFn(lambda: FakeSink([SinkUnavailable("down")]), sleep=lambda _: None))
    )
    result = pipeline.run()
    result.wait_until_finish()

    def total(name: str) -> int:
        counters = result.metrics().query(MetricsFilter().with_namespace("fake").with_name(name))["counters"]
        return sum(c.committed for c in counters)

    assert total("records_written") == 3
    assert total("retries") >= 1
    assert total("flushes") >= 1
