"""Dead-letter records: original bytes, headers, truncation, and confirmed delivery with retries."""

from confluent_kafka import KafkaError

from sinks.dead_letter import DeadLetterProducer, message
from sinks.records import DeadLetter, SourcePosition

LETTER = DeadLetter(SourcePosition("events", 3, 41), "join_content", "content x not found", b'{"id": 7}', b"{...}")


def test_a_letter_keeps_key_value_and_says_where_it_came_from():
    key, value, headers = message(LETTER, 1_000_000)
    assert (key, value) == (b'{"id": 7}', b"{...}")
    assert dict(headers) == {
        "dlq.reason": b"content x not found",
        "dlq.stage": b"join_content",
        "dlq.source.topic": b"events",
        "dlq.source.partition": b"3",
        "dlq.source.offset": b"41",
    }


def test_an_oversized_value_is_truncated_with_a_header():
    big = DeadLetter(LETTER.position, "decode_engagement", "too big", b"k", b"x" * 2_000_000)
    key, value, headers = message(big, 1_000_000)
    assert dict(headers)["dlq.truncated"] == b"2000000"
    assert record_size(key, value, headers) == 1_000_000 - 4_096 + len("dlq.truncated") + len("2000000")


def record_size(key, value, headers) -> int:
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers)


def test_every_header_counts_toward_the_limit():
    """An HTTP letter carries the change as sent in a header: it counts, or the broker refuses the
    letter and it is produced again for ever."""
    change = b'{"idempotency_key":"events/3/41","extra":"' + b"y" * 600_000 + b'"}'
    letter = DeadLetter(
        LETTER.position, "http_x", "gave up", b"k", b"x" * 600_000, headers=(("dlq.http.change", change),)
    )
    key, value, headers = message(letter, 1_000_000)
    assert record_size(key, value, headers) <= 1_000_000 - 4_096 + 64
    assert dict(headers)["dlq.http.change"] == change  # whole: the replay sends it again
    assert dict(headers)["dlq.truncated"] == b"600000"


def test_a_header_larger_than_the_limit_is_cut_once_and_says_so():
    change = b"z" * 1_500_000
    letter = DeadLetter(LETTER.position, "http_x", "gave up", b"k", b"v" * 10, headers=(("dlq.http.change", change),))
    key, value, headers = message(letter, 1_000_000)
    assert record_size(key, value, headers) <= 1_000_000 - 4_096 + 64
    assert dict(headers)["dlq.truncated.dlq.http.change"] == b"1500000"
    assert value == b"" and dict(headers)["dlq.truncated"] == b"10"


class FakeProducer:
    """Fails the first delivery of every letter once, then acknowledges."""

    def __init__(self, config):
        self.config = config
        self.pending: list = []
        self.attempts: dict[bytes, int] = {}
        self.acknowledged: list[bytes] = []

    def produce(self, topic, key, value, headers, on_delivery):
        self.pending.append((key, on_delivery))

    def __len__(self):
        return len(self.pending)

    def flush(self, timeout):
        for key, callback in self.pending:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if self.attempts[key] == 1:
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.acknowledged.append(key)
                callback(None, None)
        self.pending = []


def test_a_letter_that_times_out_is_produced_again_until_acknowledged():
    made: list[FakeProducer] = []
    slept: list[float] = []

    def factory(config):
        made.append(FakeProducer(config))
        return made[-1]

    producer = DeadLetterProducer({}, "dlq", sleep=slept.append, producer_factory=factory)
    other = DeadLetter(LETTER.position, "decode_engagement", "bad", b"k2", b"v")
    producer.send([LETTER, other])
    assert made[0].acknowledged == [b'{"id": 7}', b"k2"]
    assert made[0].attempts == {b'{"id": 7}': 2, b"k2": 2} and slept == [1.0]
    assert made[0].config["enable.idempotence"] is True
    assert made[0].config["acks"] == "all"


class TopicProducer:
    def __init__(self, config):
        self.produced: list[tuple[str, list]] = []

    def produce(self, topic, key, value, headers, on_delivery):
        self.produced.append((topic, headers))
        on_delivery(None, None)

    def __len__(self):
        return 0

    def flush(self, timeout):
        pass


def test_a_sinks_own_letters_go_to_its_topic_with_its_headers():
    producer = DeadLetterProducer({}, "dlq", producer_factory=TopicProducer, stage_topics={"http_a": "dlq.http"})
    http = DeadLetter(LETTER.position, "http_a", "HTTP 403", b"k", b"v", headers=(("dlq.http.status", b"403"),))
    producer.send([LETTER, http])
    [(first, _), (second, headers)] = producer._producer.produced
    assert (first, second) == ("dlq", "dlq.http")
    assert dict(headers)["dlq.http.status"] == b"403"
