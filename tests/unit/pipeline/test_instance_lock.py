"""The instance lock against fakeredis with Lua (redis-py's Lock scripts and our acquisition script)."""

from __future__ import annotations

import time

import fakeredis
import pytest
import redis

from pipeline.instance_lock import LOST, MISSING, UNCONFIRMED, InstanceLock, LockHeld, parse_holder

GROUP = "g"
KEY = "engagement:pipeline:lock:g"
FENCE = "engagement:pipeline:fence:g"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def instance(client: redis.Redis, pid: int, alive: set[int] | None = None, clock: Clock | None = None, **kw):
    alive = {pid} if alive is None else alive
    return InstanceLock(
        client, GROUP, 10.0, host="h1", pid=pid, is_alive=lambda p: p in alive, clock=clock or Clock(), **kw
    )


def test_a_free_lock_is_taken_with_a_new_generation_stored_for_the_sinks(client):
    lock = instance(client, 11)
    generation = lock.acquire()
    assert client.get(KEY).decode() == lock.token
    assert parse_holder(lock.token) == ("h1", 11)
    assert int(client.get(FENCE)) == generation
    assert 0 < client.pttl(KEY) <= 10_000
    lock.release()
    assert client.get(KEY) is None


def test_generations_only_grow_even_when_the_counter_key_is_lost(client):
    first = instance(client, 11).acquire()
    client.delete(KEY, FENCE)  # FLUSHALL, or a Redis without persistence
    time.sleep(0.002)  # the floor is the server's clock in ms: a loss within the same ms could repeat one
    second = instance(client, 12).acquire()
    client.delete(KEY)
    third = instance(client, 13).acquire()
    assert first < second < third


def test_a_live_holder_is_refused_with_host_pid_and_expiry(client):
    instance(client, 11).acquire()
    with pytest.raises(LockHeld) as refused:
        instance(client, 12, alive={11, 12}).acquire()
    message = str(refused.value)
    assert "h1:11:" in message and "expires in" in message and "PIPELINE_CONSUMER_GROUP" in message


def test_a_holder_on_another_host_is_refused_even_if_its_pid_is_free_here(client):
    client.set(KEY, "h2:11:abc", px=10_000)
    with pytest.raises(LockHeld):
        instance(client, 12).acquire()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_newer_generation(client):
    old = instance(client, 11, alive={11, 12})
    old_generation = old.acquire()
    new = instance(client, 12, alive={12})  # pid 11 is gone (kill -9)
    assert new.acquire() > old_generation
    assert client.get(KEY).decode() == new.token
    assert old.refresh() is False and old.lost == LOST  # the old one can never take it back
    assert client.get(KEY).decode() == new.token


def test_two_instances_taking_over_the_same_dead_holder_cannot_both_win(client):
    instance(client, 11).acquire()
    winner = instance(client, 12, alive={12, 13})

    def is_alive(pid: int) -> bool:
        # Loser has seen the dead holder and is about to replace it: the winner gets there first.
        if pid == 11 and client.get(KEY).decode().startswith("h1:11:"):
            winner.acquire()
        return pid in {12, 13}

    loser = InstanceLock(client, GROUP, 10.0, host="h1", pid=13, is_alive=is_alive, clock=Clock())
    with pytest.raises(LockHeld) as refused:
        loser.acquire()
    assert winner.token in str(refused.value)
    assert client.get(KEY).decode() == winner.token


def test_refresh_restores_the_ttl_and_a_lost_lock_is_never_taken_back(client):
    lock = instance(client, 11)
    lock.acquire()
    client.pexpire(KEY, 1_000)
    assert lock.refresh() is True
    assert client.pttl(KEY) > 9_000
    client.set(KEY, "h2:99:other", px=10_000)  # expired and taken meanwhile
    assert lock.refresh() is False and lock.lost == LOST
    assert client.get(KEY) == b"h2:99:other"
    lock.release()  # not ours: left alone
    assert client.get(KEY) == b"h2:99:other"


def test_a_lock_gone_from_redis_is_missing_and_taken_again_as_a_newer_generation(client):
    lock = instance(client, 11)
    first = lock.acquire()
    client.delete(KEY, FENCE)  # Redis lost it, or came back from a copy older than the lock's TTL
    assert lock.refresh() is False and lock.lost == MISSING
    assert client.get(KEY) is None
    time.sleep(0.002)  # the floor is the server's clock in ms (see the test above)
    second = lock.acquire()
    assert second > first and int(client.get(FENCE)) == second and lock.lost is None


def test_an_older_redis_holding_one_of_our_earlier_tokens_is_missing_not_a_takeover(client):
    lock = instance(client, 11)
    lock.acquire()
    earlier = lock.token
    lock.acquire()  # a newer token of ours (after an unconfirmed loss)
    client.set(KEY, earlier, px=10_000)  # the older copy still has the earlier one
    assert lock.refresh() is False and lock.lost == MISSING
    lock.acquire()
    assert client.get(KEY).decode() == lock.token


def test_an_older_redis_holding_a_dead_holder_of_this_host_is_missing(client):
    lock = instance(client, 12, alive={12})
    lock.acquire()
    client.set(KEY, "h1:11:old", px=10_000)  # the instance before this one, dead since
    assert lock.refresh() is False and lock.lost == MISSING


def test_a_lock_read_that_fails_after_not_owned_decides_nothing_yet(client):
    lock = instance(client, 11)
    lock.acquire()
    client.delete(KEY)

    def unreachable(_key: str) -> None:
        raise redis.ConnectionError("refused")

    client.get = unreachable  # type: ignore[method-assign]
    assert lock.refresh() is True and lock.lost is None


def test_redis_out_of_reach_for_most_of_a_ttl_leaves_the_lock_unconfirmed_then_it_is_taken_again(client):
    clock = Clock()
    lock = instance(client, 11, clock=clock)
    first = lock.acquire()

    def unreachable() -> None:
        raise redis.ConnectionError("refused")

    lock._lock.reacquire = unreachable  # type: ignore[method-assign]
    clock.now += 5.0
    assert lock.refresh() is True and lock.lost is None  # a short outage changes nothing
    clock.now += 3.0  # 8 s of a 10 s TTL without a confirmed refresh
    assert lock.refresh() is False and lock.lost == UNCONFIRMED
    del lock._lock.reacquire
    second = lock.acquire()  # the key still holds our old token: replaced, as a new generation
    assert second > first and lock.lost is None
    assert client.get(KEY).decode() == lock.token


def test_holder_values_parse_with_and_without_a_nonce():
    assert parse_holder("host:12:ab") == ("host", 12)
    assert parse_holder("host:12") == ("host", 12)
    assert parse_holder("garbage") == ("garbage", None)
