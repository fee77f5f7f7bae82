"""``make status`` shows the supervisor's restarts for a Redis that came back older."""

from __future__ import annotations

import time

import fakeredis

from pipeline.status.read import _lock
from pipeline.status.render import restarted_line
from pipeline.supervisor import record_restart


def test_restarts_recorded_by_the_supervisor_are_read_with_the_lock_and_rendered():
    client = fakeredis.FakeRedis()
    client.set("engagement:pipeline:lock:g", "h1:7:abc", px=10_000)
    assert "restarts" not in _lock(client, "g")
    record_restart(client, "g", "lock_missing")
    record_restart(client, "g", "positions_rewound")
    record_restart(client, "g", "positions_rewound")
    lock = _lock(client, "g")
    assert lock["restarts"]["positions_rewound"] == "2" and lock["restarts"]["lock_missing"] == "1"
    assert lock["restarts"]["last_cause"] == "positions_rewound"
    line = restarted_line({**lock["restarts"], "last_at_ms": str(int(time.time() * 1000) - 12_000)})
    assert line == "  restarted for a Redis that came back older: positions rewound 2, lock gone 1 (last 12 s ago)"
