"""The endpoint's breaker (pybreaker) on an injected clock: closed -> open -> half-open -> closed."""

import pybreaker
import pytest

from sinks.http_breaker import BreakerBoard, BreakerConfig, EndpointFailure, make_breaker

from .http_fakes import Clock

CONFIG = BreakerConfig(fail_max=3, reset_timeout_s=10.0, failure_rate=0.5, window_s=30.0, min_calls=6)


def fail() -> None:
    raise EndpointFailure("503")


def succeed() -> str:
    return "ok"


def call(breaker, func):
    try:
        return breaker.call(func)
    except (EndpointFailure, pybreaker.CircuitBreakerError) as exc:
        return type(exc).__name__


def test_closed_open_half_open_closed():
    clock = Clock()
    breaker = make_breaker("e", CONFIG, clock)
    assert [call(breaker, fail) for _ in range(3)] == ["EndpointFailure", "EndpointFailure", "CircuitBreakerError"]
    assert breaker.current_state == "open"
    clock.now += 9.9
    assert call(breaker, succeed) == "CircuitBreakerError"  # still open: no call made
    assert breaker.current_state == "open"
    clock.now += 0.2
    assert call(breaker, succeed) == "ok"  # the trial, half-open, succeeds
    assert breaker.current_state == "closed"


def test_a_failed_trial_opens_it_for_another_reset_timeout():
    clock = Clock()
    breaker = make_breaker("e", CONFIG, clock)
    for _ in range(3):
        call(breaker, fail)
    clock.now += 10.1
    assert call(breaker, fail) == "CircuitBreakerError"
    assert breaker.current_state == "open"
    clock.now += 5
    assert call(breaker, succeed) == "CircuitBreakerError"
    clock.now += 5.2
    assert call(breaker, succeed) == "ok" and breaker.current_state == "closed"


def test_the_trial_sees_the_half_open_state():
    clock = Clock()
    breaker = make_breaker("e", CONFIG, clock)
    for _ in range(3):
        call(breaker, fail)
    clock.now += 11
    seen = []
    breaker.call(lambda: seen.append(breaker.current_state))
    assert seen == ["half-open"]


def test_a_failure_rate_over_the_window_opens_it_without_failures_in_a_row():
    clock = Clock()
    breaker = make_breaker("e", CONFIG, clock)
    for func in (fail, succeed, fail, succeed, fail):  # 3 of 5: below min_calls
        call(breaker, func)
        clock.now += 1
    assert breaker.current_state == "closed"
    call(breaker, succeed)  # 3 of 6 = 50 %: not yet, the last call succeeded
    assert breaker.current_state == "closed"
    call(breaker, fail)  # 4 of 7
    assert breaker.current_state == "open"


def test_old_outcomes_leave_the_window():
    clock = Clock()
    breaker = make_breaker("e", CONFIG, clock)
    for _ in range(5):
        call(breaker, fail)
        call(breaker, succeed)
        call(breaker, succeed)
    clock.now += 31  # all of them are older than the window now
    for func in (succeed, succeed, succeed, succeed, fail, fail):  # 2 of 6
        call(breaker, func)
    assert breaker.current_state == "closed"


class FakeRedis:
    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}

    def pipeline(self, transaction=False):
        return self

    def hset(self, key, field, value):
        self.hashes.setdefault(key, {})[field] = value

    def expire(self, key, seconds):
        pass

    def execute(self):
        pass

    def scan_iter(self, match, count):
        return [k for k in self.hashes if k.startswith(match.rstrip("*"))]

    def hgetall(self, key):
        return self.hashes[key]


def test_the_board_keeps_fresh_states_by_endpoint_and_instance():
    now = [100.0]
    redis = FakeRedis()
    one, two = BreakerBoard(redis, lambda: now[0]), BreakerBoard(redis, lambda: now[0])
    one.publish("analytics", "open", 5, "HTTP 503")
    now[0] += 10
    two.publish("analytics", "closed", 0)
    board = one.read()
    assert sorted(e["state"] for e in board["analytics"]) == ["closed", "open"]
    now[0] += 6  # the first entry is 16 s old now
    assert [e["state"] for e in one.read()["analytics"]] == ["closed"]


@pytest.mark.parametrize("state", ["open", "half-open", "closed"])
def test_states_have_gauge_values(state):
    from sinks.http_breaker import STATES

    assert STATES[state] == {"closed": 0, "half-open": 1, "open": 2}[state]


def test_a_closing_sink_withdraws_its_entry():
    redis = FakeRedis()
    redis.hdel = lambda key, field: redis.hashes[key].pop(field)
    board = BreakerBoard(redis, lambda: 100.0)
    board.publish("analytics", "open", 5)
    board.withdraw("analytics")
    assert board.read() == {}
