"""Positions of a non-atomic sink, stored as Kafka committed offsets of a consumer group of its own.

A sink that cannot store positions in the same write as its data (BigQuery, an HTTP endpoint) stores
them after the write, and is idempotent by record id (``sinks.contract``). Where those positions
live is then a free choice, and Kafka is the one that adds no dependency: the lane reads Kafka
anyway, so an outage of Kafka stops the lane whatever the store, while a store in Redis would
stop the BigQuery lane whenever Redis is down. It is also where Kafka Connect's sink connectors keep
theirs, so ``kafka-consumer-groups --describe --group <group>`` and every lag exporter show how far
behind the sink is, per partition, with no extra tooling.

Each sink has its own group, ``<PIPELINE_CONSUMER_GROUP>.sink.<sink name>``, that no consumer ever
joins: the offsets are committed by a consumer that never subscribes (a "simple" commit, which the
broker accepts for a group with no members). The committed offset is ``Position.next_offset``; its
metadata string holds the encoded ``Position`` (with the Debezium mark). The broker caps metadata at
``offset.metadata.max.bytes`` (4,096 by default); a mark whose key digests would pass
``METADATA_MAX_BYTES`` is stored without them. That is safe here, and only here: without the
digests, a re-send at exactly the mark's LSN is written again, which a sink idempotent by record
id absorbs.

Caveat: Kafka expires the offsets of a group without members ``offsets.retention.minutes`` (7 days
by default) after their last commit. A partition with no new records for longer, or a pipeline
stopped for longer, restarts from the earliest offset; the sink then writes duplicates, which its
idempotent target absorbs. Raise the broker setting if that replay is too long.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from sinks.contract import SinkUnavailable
from sinks.positions import Position, decode, encode

METADATA_MAX_BYTES: Final = 4_000
_TIMEOUT_S: Final = 10.0


def stored_form(position: Position, extra: str = "") -> str:
    """The metadata string for ``position`` (and a sink's ``extra`` state after a ``|``): digests
    dropped if they would pass the broker's cap."""
    suffix = f"|{extra}" if extra else ""
    text = encode(position) + suffix
    if len(text) <= METADATA_MAX_BYTES or position.mark is None:
        return text
    # Only the digests go: the mark's commit time and previous sequence are a few bytes.
    mark = msgspec.structs.replace(position.mark, keys=frozenset(), prev_keys=frozenset())
    return encode(Position(position.next_offset, mark)) + suffix


def read_form(offset: int, metadata: str | None) -> Position:
    """The position a committed offset stands for; the offset wins over stale metadata."""
    return read_extra(offset, metadata)[0]


def read_extra(offset: int, metadata: str | None) -> tuple[Position, str]:
    if metadata:
        text, _, extra = metadata.partition("|")
        try:
            position = decode(text)
        except ValueError:
            return Position(offset), ""
        if position.next_offset == offset:
            return position, extra
    return Position(offset), ""


def group_id(consumer_group: str, sink_name: str) -> str:
    return f"{consumer_group}.sink.{sink_name}"


def delete_groups(client_config: dict[str, Any], consumer_group: str) -> list[str]:
    """Delete ``consumer_group`` and every positions group under it (``<group>.sink.<name>``, a
    lane's ``<group>.<lane>``): what a finished rebuild or replay leaves. Returns their names."""
    admin = AdminClient(client_config)
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid]
    ours = [g for g in groups if g == consumer_group or g.startswith(consumer_group + ".")]
    if ours:
        for future in admin.delete_consumer_groups(ours, request_timeout=10).values():
            future.result()
    return ours


class KafkaPositions:
    """``load``/``store`` a sink's positions; build it in ``Sink.open`` (it holds a client)."""

    def __init__(self, client_config: Mapping[str, Any], group: str) -> None:
        self.group = group
        self._consumer = Consumer(
            {
                **client_config,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "socket.timeout.ms": int(_TIMEOUT_S * 1000),
            }
        )

    def load(self, topics: Sequence[str]) -> dict[str, Position]:
        return {key: position for key, (position, _) in self.load_with_extras(topics).items()}

    def load_with_extras(self, topics: Sequence[str]) -> dict[str, tuple[Position, str]]:
        """Positions with the sink's extra state stored next to each (``store(..., extras)``)."""
        with _available("read positions"):
            partitions = []
            for topic in topics:
                meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics[topic]
                if meta.error is not None:
                    raise KafkaException(meta.error)
                partitions += [TopicPartition(topic, p) for p in sorted(meta.partitions)]
            committed = self._consumer.committed(partitions, timeout=_TIMEOUT_S) if partitions else []
        return {f"{tp.topic}:{tp.partition}": read_extra(tp.offset, tp.metadata) for tp in committed if tp.offset >= 0}

    def store(self, positions: Mapping[str, Position], extras: Mapping[str, str] | None = None) -> None:
        offsets = []
        for key, position in positions.items():
            topic, _, partition = key.rpartition(":")
            metadata = stored_form(position, (extras or {}).get(key, ""))
            offsets.append(TopicPartition(topic, int(partition), position.next_offset, metadata=metadata))
        if offsets:
            with _available("store positions"):
                self._consumer.commit(offsets=offsets, asynchronous=False)

    def start_at_end(self, topic: str) -> dict[int, int]:
        """Store ``topic``'s end offsets of now as the positions (tests, benchmarks, a sink added to
        a running system that should see only what comes next); returns them by partition."""
        meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics[topic]
        ends = {
            p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S)[1]
            for p in sorted(meta.partitions)
        }
        self.store({f"{topic}:{p}": Position(end) for p, end in ends.items()})
        return ends

    def start_at_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """Store, per partition of ``topic``, the first offset whose record's timestamp is at or after
        ``timestamp_ms`` (the end where there is none yet) as the positions; returns them by partition."""
        meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics[topic]
        wanted = [TopicPartition(topic, p, timestamp_ms) for p in sorted(meta.partitions)]
        found = self._consumer.offsets_for_times(wanted, timeout=_TIMEOUT_S)
        starts = {}
        for tp in found:
            if tp.offset < 0:  # nothing at or after that time: the end of now
                tp.offset = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=_TIMEOUT_S
                )[1]
            starts[tp.partition] = tp.offset
        self.store({f"{topic}:{p}": Position(offset) for p, offset in starts.items()})
        return starts

    def lag(self, topic: str) -> dict[int, int]:
        """Records per partition of ``topic`` past what the sink has stored (tools, status, demo)."""
        stored = self.load([topic])
        lag = {}
        meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics[topic]
        for partition in sorted(meta.partitions):
            _, end = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=_TIMEOUT_S)
            position = stored.get(f"{topic}:{partition}")
            lag[partition] = max(0, end - (0 if position is None else position.next_offset))
        return lag

    def close(self) -> None:
        self._consumer.close()


class SinksLag:
    """How many records of its topic each sink with Kafka positions has not stored yet, by sink
    name (``topics``: sink name -> topic); ``make demo`` and the benchmarks wait on it."""

    def __init__(self, client_config: Mapping[str, Any], consumer_group: str, topics: Mapping[str, str]) -> None:
        self._stores = {
            sink: (KafkaPositions(client_config, group_id(consumer_group, sink)), topic)
            for sink, topic in topics.items()
        }

    def now(self) -> dict[str, int]:
        return {sink: sum(store.lag(topic).values()) for sink, (store, topic) in self._stores.items()}

    def close(self) -> None:
        for store, _ in self._stores.values():
            store.close()


@contextmanager
def _available(what: str) -> Iterator[None]:
    """Every Kafka error is worth waiting out here (the driver retries positions forever): a broker
    that is down or electing a coordinator, and also a group someone joined by mistake, which only
    an operator can fix, and which the driver's warnings then name."""
    try:
        yield
    except KafkaException as exc:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        reason = error.str() if error is not None else str(exc)
        raise SinkUnavailable(f"Kafka, {what}: {reason}", retry_after_s=1.0) from exc
