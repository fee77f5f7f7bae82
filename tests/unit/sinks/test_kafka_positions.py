"""SinksLag: the lag of the sinks whose positions are Kafka committed offsets."""

from __future__ import annotations


def test_sinks_lag_sums_each_sink_s_partitions_of_its_own_topic(monkeypatch):
    import sinks.kafka_positions as kp

    class Store:
        def __init__(self, client_config, group: str) -> None:
            self.group, self.closed = group, False
            made.append(self)

        def lag(self, topic: str) -> dict[int, int]:
            return {0: 3, 1: 4} if (self.group, topic) == ("g.sink.bigquery", "events") else {0: 1}

        def close(self) -> None:
            self.closed = True

    made: list[Store] = []
    monkeypatch.setattr(kp, "KafkaPositions", Store)
    lag = kp.SinksLag({}, "g", {"bigquery": "events", "bigquery_content": "content"})
    assert lag.now() == {"bigquery": 7, "bigquery_content": 1}
    lag.close()
    assert [store.closed for store in made] == [True, True]
