"""The Beam DoFn around the flush: a writer thread beside the bundle thread, metrics on the bundle thread."""

import threading

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from sinks.base import SinkWriteFn
from sinks.contract import Outcome, SinkUnavailable

from .fakes import FakeSink, Letters, change


def test_flushes_by_size_within_a_bundle():
    sink = FakeSink()
    fn = SinkWriteFn(lambda: sink, Letters, ["t"], max_buffer=2, max_latency_ms=10_000)
    fn.setup()
    fn.start_bundle()
    for offset in range(5):
        fn.process(change(offset))
    fn.finish_bundle()
    assert [line for line in sink.log if line.startswith("write")] == ["write 0,1", "write 2,3", "write 4"]


def test_a_flush_runs_beside_the_bundle_thread_and_the_bundle_waits_for_it():
    started, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def blocked(batch):
        threads.append(threading.current_thread().name)
        started.set()
        assert release.wait(5)
        return Outcome()

    sink = FakeSink([blocked])
    fn = SinkWriteFn(lambda: sink, Letters, ["t"], max_latency_ms=0)
    fn.setup()
    fn.start_bundle()
    fn.process(change(1))  # returns while the write is still blocked
    assert started.wait(5) and sink.applied == []
    release.set()
    fn.finish_bundle()
    assert sink.applied == [1] and threads != [threading.current_thread().name]
    fn.teardown()


def blocking(started: threading.Event, release: threading.Event):
    """A write that says it started, then holds the writer thread until released."""

    def blocked(batch):
        started.set()
        assert release.wait(5)
        return Outcome()

    return blocked


def test_the_bundle_thread_buffers_past_the_latency_while_a_flush_is_in_flight():
    started, release = threading.Event(), threading.Event()
    sink = FakeSink([blocking(started, release)])
    fn = SinkWriteFn(lambda: sink, Letters, ["t"], max_buffer=10, max_latency_ms=0)
    fn.setup()
    fn.start_bundle()
    fn.process(change(0))
    assert started.wait(5)
    for offset in range(1, 4):
        fn.process(change(offset))  # past the latency, but the writer is busy: no wait, no flush
    assert fn._buffer == [change(offset) for offset in range(1, 4)] and sink.log == []
    release.set()
    fn.finish_bundle()
    assert [line for line in sink.log if line.startswith("write")] == ["write 0", "write 1,2,3"]
    fn.teardown()


def test_a_full_buffer_waits_for_the_flush_in_flight():
    started, release = threading.Event(), threading.Event()
    sink = FakeSink([blocking(started, release)])
    fn = SinkWriteFn(lambda: sink, Letters, ["t"], max_buffer=2, max_latency_ms=0)
    fn.setup()
    fn.start_bundle()
    fn.process(change(0))
    assert started.wait(5)
    fn.process(change(1))
    waiter = threading.Thread(target=fn.process, args=(change(2),))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # the buffer is full: it waits for "write 0"
    release.set()
    waiter.join(5)
    fn.finish_bundle()
    assert [line for line in sink.log if line.startswith("write")] == ["write 0", "write 1,2"]
    fn.teardown()


def test_metrics_of_flushes_on_the_writer_thread_are_reported():
    def refuse_once(batch):
        raise SinkUnavailable("down")

    pipeline = beam.Pipeline()
    _ = (
        pipeline
        | beam.Create([[change(1), change(2), change(3)]])
        | beam.ParDo(SinkWriteFn(lambda: FakeSink([refuse_once]), Letters, ["t"], sleep=lambda _: None))
    )
    result = pipeline.run()
    result.wait_until_finish()

    def total(name: str) -> int:
        counters = result.metrics().query(MetricsFilter().with_namespace("fake").with_name(name))["counters"]
        return sum(c.committed for c in counters)

    assert (total("records_written"), total("retries"), total("flushes")) == (3, 1, 1)
