"""How the source takes messages from its consumer: what is there at once, waiting only when empty."""

from __future__ import annotations

from pipeline.sources.kafka_partitions import _take


class QueueConsumer:
    """``consume(n, timeout)`` as confluent-kafka's: up to n of what the queue holds; records each call.
    A wait finds ``arriving`` in the queue when it ends."""

    def __init__(self, queued: list[int], arriving: list[int] | None = None) -> None:
        self.queued = list(queued)
        self.arriving = list(arriving or [])
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[int]:
        self.calls.append((num_messages, timeout))
        if timeout > 0 and not self.queued:
            self.queued, self.arriving = self.arriving, []
        taken, self.queued = self.queued[:num_messages], self.queued[num_messages:]
        return taken


def test_what_the_consumer_holds_is_taken_without_waiting():
    consumer = QueueConsumer([1, 2, 3])
    assert _take(consumer, 1000, 0.01) == [1, 2, 3]  # type: ignore[arg-type]
    assert consumer.calls == [(1000, 0)]


def test_a_full_batch_is_capped_at_the_limit():
    consumer = QueueConsumer(list(range(1500)))
    assert _take(consumer, 1000, 0.01) == list(range(1000))  # type: ignore[arg-type]
    assert consumer.calls == [(1000, 0)]


def test_an_empty_consumer_is_waited_on_for_the_first_then_the_rest_taken_at_once():
    consumer = QueueConsumer([], arriving=[7, 8, 9])
    assert _take(consumer, 1000, 0.25) == [7, 8, 9]  # type: ignore[arg-type]
    assert consumer.calls == [(1000, 0), (1, 0.25), (999, 0)]


def test_nothing_arriving_is_an_empty_take():
    consumer = QueueConsumer([])
    assert _take(consumer, 1000, 0.01) == []  # type: ignore[arg-type]
    assert consumer.calls == [(1000, 0), (1, 0.01)]
