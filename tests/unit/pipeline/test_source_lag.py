"""Each lane's source lag, as a scrape reads it: the ends asked when scraped, the readers' positions."""

from __future__ import annotations

from confluent_kafka import KafkaException
from prometheus_client import REGISTRY, generate_latest

from infra import telemetry
from pipeline.sources.end_offsets import EndOffsetCache
from pipeline.sources.lag import SourceLag


class Kafka:
    """End offsets by topic, as a broker would answer; ``down`` raises as librdkafka does."""

    def __init__(self, ends: dict[str, dict[int, int]]) -> None:
        self.ends_by_topic = ends
        self.asked = 0
        self.down = False

    def ends(self, topic: str) -> dict[int, int]:
        self.asked += 1
        if self.down:
            raise KafkaException("broker transport failure")
        return self.ends_by_topic[topic]


def now(ask) -> None:
    """The background ask, run at once: the figures are then those of this scrape."""
    ask()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scraped(lane: str, topic: str, partition: int) -> float:
    wanted = f'engagement_source_lag_records{{lane="{lane}",partition="{partition}",topic="{topic}"}} '
    line = next(line for line in generate_latest(REGISTRY).decode().splitlines() if line.startswith(wanted))
    return float(line.split()[-1])


def test_two_lanes_on_one_partition_have_their_own_lag_and_a_stopped_one_keeps_growing() -> None:
    kafka, clock = Kafka({"unit.lag": {0: 100}}), Clock()
    lag = SourceLag(EndOffsetCache(clock=clock), lookup=lambda config: kafka, clock=clock, spawn=now)
    for lane, position in (("unit_boards", 100), ("unit_bigquery", 40)):
        handle = telemetry.gauge("engagement_source_lag_records", lane=lane, topic="unit.lag", partition="0")
        if lag.record({"bootstrap.servers": "unused"}, lane, "unit.lag", 0, position):
            handle.track(lambda key=(lane, "unit.lag", 0): lag.lag(key))
    assert (scraped("unit_boards", "unit.lag", 0), scraped("unit_bigquery", "unit.lag", 0)) == (0.0, 60.0)
    # The BigQuery lane makes no more calls; the topic grows, and the next scrape says so.
    kafka.ends_by_topic["unit.lag"][0] = 130
    clock.now = 1.0
    lag.record({}, "unit_boards", "unit.lag", 0, 130)
    assert (scraped("unit_boards", "unit.lag", 0), scraped("unit_bigquery", "unit.lag", 0)) == (0.0, 90.0)
    assert kafka.asked == 2  # once per scrape, not once per series


def test_without_kafka_the_ends_the_readers_saw_stand() -> None:
    kafka, clock = Kafka({"unit.lag2": {0: 50}}), Clock()
    seen = EndOffsetCache(clock=clock)
    lag = SourceLag(seen, lookup=lambda config: kafka, clock=clock, spawn=now)
    lag.record({"bootstrap.servers": "unused"}, "unit_lane", "unit.lag2", 0, 20)
    assert lag.lag(("unit_lane", "unit.lag2", 0)) == 30.0
    kafka.down, clock.now = True, 1.0
    seen.record_end("unit.lag2", 0, 45)
    assert lag.lag(("unit_lane", "unit.lag2", 0)) == 25.0
    clock.now = 120.0  # the readers' ends are too old to trust: no lag is made up
    assert lag.lag(("unit_lane", "unit.lag2", 0)) == 0.0


def test_a_scrape_never_waits_for_kafka() -> None:
    kafka, clock, asks = Kafka({"unit.lag3": {0: 100}}), Clock(), []
    lag = SourceLag(EndOffsetCache(clock=clock), lookup=lambda config: kafka, clock=clock, spawn=asks.append)
    lag.record({"bootstrap.servers": "unused"}, "unit_lane", "unit.lag3", 0, 40)
    assert lag.lag(("unit_lane", "unit.lag3", 0)) == 0.0  # nothing known yet: no lag made up
    assert (len(asks), kafka.asked) == (1, 0)  # the ask is started, not waited for
    assert lag.lag(("unit_lane", "unit.lag3", 0)) == 0.0 and len(asks) == 1  # one ask at a time
    asks[0]()
    assert lag.lag(("unit_lane", "unit.lag3", 0)) == 60.0
