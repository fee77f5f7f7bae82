"""One instance at a time (issue 14, finding 3), on the real stack.

``kill -9`` of the supervisor alone (not its process group) used to leave its job and Prism running
orphaned, and a new supervisor submitted a second job beside them: every dead letter twice. Now the
children die with the supervisor, the new one takes the lock over as a newer generation, and a write
carrying an older generation is refused by Redis.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.process import pid_alive
from infra.settings import LeaderboardSettings, Settings
from infra.stack.local import LocalStack
from pipeline.instance_lock import InstanceLock
from sinks.contract import Fenced
from sinks.fencing import Fence, guard
from sinks.flush import Flusher
from sinks.records import Contribution, EnrichedChange, SourcePosition
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import next_offsets

from .pipeline_helpers import Streaming, assert_redis_matches_sql, flush_redis, wait_caught_up
from .test_pipeline import generate

pytestmark = pytest.mark.integration
GARBAGE = 5  # malformed envelopes before the kill, and as many after


class NoLetters:
    def send(self, letters) -> None:
        raise AssertionError(f"no dead letters expected: {letters}")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def workers(group: str) -> list[int]:
    """Every live ``pipeline.worker`` process of this consumer group, whoever its parent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        wanted = b"pipeline.worker" in cmdline and f"PIPELINE_CONSUMER_GROUP={group}\0".encode() in environ
        if wanted and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def produce_garbage(settings: Settings, run: str, names: range) -> dict[bytes, tuple[int, int]]:
    """Malformed envelopes on the event topic: key -> (partition, offset)."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    placed: dict[bytes, tuple[int, int]] = {}

    def delivered(err, message) -> None:
        assert err is None, err
        placed[message.key()] = (message.partition(), message.offset())

    for n in names:
        key = f'{{"id": "{run}-{n}"}}'.encode()
        producer.produce(settings.cdc.engagement_topic, key=key, value=b"{not json " + key, on_delivery=delivered)
    assert producer.flush(30) == 0
    return placed


def letters_for(settings: Settings, keys: set[bytes]) -> Counter[bytes]:
    """How many letters the dead-letter topic holds for each of ``keys`` (read to its end)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": f"t-{uuid.uuid4()}"})
    topic = settings.cdc.dlq_topic
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    seen: Counter[bytes] = Counter()
    done = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 60
    try:
        while len(done) < len(ends):
            assert time.monotonic() < deadline, "could not read the dead-letter topic to its end"
            for message in consumer.consume(500, timeout=0.5):
                if message.error():
                    continue
                if message.key() in keys:
                    seen[message.key()] += 1
                if message.offset() + 1 >= ends[message.partition()]:
                    done.add(message.partition())
    finally:
        consumer.close()
    return seen


def test_kill_9_of_the_supervisor_alone_leaves_one_job_and_writes_no_letter_twice(
    stack: LocalStack, settings: Settings, tmp_path
):
    flush_redis(settings)
    run = uuid.uuid4().hex[:8]
    group = settings.pipeline.consumer_group
    topic = settings.cdc.engagement_topic
    client = settings.redis.client()
    log = tmp_path / "pipeline.log"
    prism_pid_file = settings.stack.dir / "pids" / f"prism-{settings.pipeline.prism_port}.pid"
    first, second = Streaming(settings, log), Streaming(settings, log)
    first.start()
    try:
        generator = generate(settings, "--rate", "90000", "--duration", "40")  # 1,500 events/s
        before = produce_garbage(settings, run, range(GARBAGE))
        # The first job has applied the garbage, and stored positions past it: no replay can
        # produce its letters again, so a second letter could only come from a second job.
        wait_for(
            lambda: all(next_offsets(client, "redis_leaderboard", topic).get(p, 0) > o for p, o in before.values()),
            180,
            "the first job did not get past the garbage",
        )
        [old_worker] = workers(group)
        old_prism = int(prism_pid_file.read_text().split()[0])  # "pid start boot-id"
        assert pid_alive(old_prism)
        os.kill(first.proc.pid, signal.SIGKILL)  # the supervisor alone, not its group
        first.proc.wait()
        wait_for(
            lambda: not pid_alive(old_worker) and not pid_alive(old_prism), 10, "the old job outlived its supervisor"
        )
        after = produce_garbage(settings, run, range(GARBAGE, 2 * GARBAGE))
        second.start()
        assert generator.wait(180) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=240)
        wait_for(
            lambda: all(next_offsets(client, "redis_leaderboard", topic).get(p, 0) > o for p, o in after.values()),
            60,
            "the new job did not get past the garbage",
        )
        # Exactly one job: the new supervisor's worker, in the new supervisor's own Prism.
        [worker] = workers(group)
        assert worker in children(second.proc.pid)
        new_prism = int(prism_pid_file.read_text().split()[0])  # "pid start boot-id"
        assert new_prism != old_prism and new_prism in children(second.proc.pid)
        assert second.alive()
    finally:
        if second.proc is not None:
            second.stop()
    assert b"took over the lock of dead instance" in log.read_bytes()
    keys = set(before) | set(after)
    assert letters_for(settings, keys) == Counter(dict.fromkeys(keys, 1))
    assert_redis_matches_sql(settings)


def test_a_redis_write_under_a_lock_taken_over_since_is_refused(stack: LocalStack, settings: Settings):
    client = settings.redis.client()
    flush_redis(settings)
    group = f"fence-{uuid.uuid4().hex[:8]}"
    old = InstanceLock(client, group, 10.0, pid=1)
    stale = old.acquire()
    client.delete(old.key)  # the holder is gone; a new instance takes the lock
    new = InstanceLock(client, group, 10.0)
    current = new.acquire()
    assert current > stale
    minute = int(time.time() // 60)
    board = LeaderboardSettings(window_minutes=10, allowed_lateness_minutes=10)

    def write(token: int) -> int:
        sink = guard(
            RedisLeaderboardSink(settings.redis, board, roll_in_background=False),
            Fence(new.fence_key, token, settings.redis),
        )
        sink.open()
        try:
            flusher = Flusher(sink, NoLetters(), ["fencetest"], owns_upstream_letters=True)
            flusher.load()
            k = Contribution("a", "video", minute, "play", 5.0, 5.0, 1)
            change = EnrichedChange(SourcePosition("fencetest", 0, 0), b"k", None, "c", None, 0, None, None, None, (k,))
            return flusher.flush([change]).written
        finally:
            sink.close()

    with pytest.raises(Fenced, match=f"generation {current}"):
        write(stale)
    assert client.hgetall("engagement:positions:redis_leaderboard") == {}
    assert client.exists("engagement:content:a", "top_engagement:10min") == 0
    assert write(current) == 1
    assert client.zscore("top_engagement:10min", "a") == 5.0
    new.release()
