"""Which Redis errors a Redis sink treats as passing (retried) and which fail the write."""

import redis

from sinks.redis_store import is_transient


def test_redis_replies_that_pass_are_transient_and_others_are_not():
    assert is_transient(redis.ResponseError("BUSY Redis is busy running a script"))
    assert is_transient(redis.ResponseError("MISCONF Errors writing to the AOF file"))
    assert is_transient(redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    assert is_transient(redis.ConnectionError("refused"))
    assert not is_transient(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
