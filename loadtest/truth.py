"""The truth check: Redis against SQL over the tables, and waits for the Redis sink to catch up.

Runtime-neutral (no pytest): the integration tests and the fault suite (``loadtest.faults``) both
use it. Postgres is the truth; every content total, every live per-minute bucket and the window
board must equal what SQL computes over the current tables (inserts, updates, deletes).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import psycopg

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets
from sinks.redis_leaderboard import RedisLeaderboardSink, board_key
from sinks.redis_store import next_offsets

TOLERANCE = 1e-3  # seconds: sums of thousandths in floating point


def wait_topic_settled(settings: Settings, quiet_s: float = 2.0, timeout: float = 120) -> None:
    """Until Debezium has published every committed change: the topic's end offsets stop moving."""
    deadline = time.monotonic() + timeout
    previous = end_offsets(settings.kafka, settings.cdc.engagement_topic)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        ends = end_offsets(settings.kafka, settings.cdc.engagement_topic)
        if ends == previous:
            return
        previous = ends
    raise AssertionError(f"the engagement topic kept growing for {timeout} s")


def wait_stored(
    settings: Settings,
    reads: Sequence[tuple[str, str]],
    stored: Callable[[str, str], Mapping[int, int]],
    timeout: float,
    settle: float,
) -> None:
    """Until, for each ``(sink, topic)`` of ``reads``, the sink has stored (``stored(sink, topic)``:
    partition -> next offset) the topic's end offsets, and those held still for ``settle`` seconds."""
    deadline = time.monotonic() + timeout
    previous: dict[str, int] = {}
    behind: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        ends = {(sink, topic): end_offsets(settings.kafka, topic) for sink, topic in reads}
        flat = {f"{sink} {topic}:{p}": e for (sink, topic), by_p in ends.items() for p, e in by_p.items()}
        behind = {}
        for sink, topic in reads:
            have = stored(sink, topic)
            for p, end in ends[sink, topic].items():
                if have.get(p, 0) < end:
                    behind[f"{sink} {topic}:{p}"] = (have.get(p, 0), end)
        if not behind and flat == previous:
            return
        previous = flat
        time.sleep(settle if not behind else 0.5)
    raise AssertionError(f"not caught up within {timeout} s; (stored, end) behind: {behind}")


def wait_caught_up(
    settings: Settings, timeout: float = 120, settle: float = 3.0, sink: str = RedisLeaderboardSink.name
) -> None:
    """Until Debezium has published everything (the topic ends stop moving) and ``sink`` has applied
    it: the event topic and the parking topic, whose lane brings back the events that waited for
    their content (``sinks.parking``). Both ends must hold still for ``settle`` seconds, so an event
    still going round the parking topic is waited for."""
    client = settings.redis.client()
    reads = [(sink, settings.cdc.engagement_topic), (sink, settings.cdc.parked_topic)]
    wait_stored(settings, reads, lambda name, topic: next_offsets(client, name, topic), timeout, settle)


def sql_state(settings: Settings) -> tuple[dict[str, dict[str, float]], dict[tuple[int, str], float]]:
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        per_content = {
            str(row[0]): {
                "events": row[1],
                "plays": row[2],
                "pauses": row[3],
                "finishes": row[4],
                "clicks": row[5],
                "total_seconds": float(row[6]),
            }
            for row in conn.execute(
                "SELECT content_id, count(*), count(*) FILTER (WHERE event_type = 'play'),"
                " count(*) FILTER (WHERE event_type = 'pause'), count(*) FILTER (WHERE event_type = 'finish'),"
                " count(*) FILTER (WHERE event_type = 'click'), coalesce(sum(duration_ms), 0) / 1000.0"
                " FROM engagement_events WHERE content_id IS NOT NULL GROUP BY content_id"
            )
        }
        buckets = {
            (int(row[0]), str(row[1])): float(row[2])
            for row in conn.execute(
                "SELECT floor(extract(epoch FROM event_ts) / 60)::bigint, content_id, sum(duration_ms) / 1000.0"
                " FROM engagement_events WHERE content_id IS NOT NULL AND duration_ms IS NOT NULL"
                " GROUP BY 1, 2"
            )
        }
    return per_content, buckets


def hand_made_content(settings: Settings) -> frozenset[str]:
    """Content ids some test produced straight onto the topics (never in Postgres): SQL cannot know
    their events, so the comparison leaves them out."""
    client = settings.redis.client(decode_responses=True)
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        in_sql = {str(row[0]) for row in conn.execute("SELECT id FROM content")}
    on_boards = {m for m in client.zrange(board_key(settings.leaderboard.window_minutes), 0, -1)}
    for key in client.scan_iter("engagement:minute:*", count=1000):
        on_boards |= set(client.zrange(key, 0, -1))
    return frozenset(on_boards - in_sql)


def assert_redis_matches_sql(settings: Settings, ignore_content: frozenset[str] | None = None) -> dict[str, int]:
    """Every content total, every live per-minute bucket and the window board equal SQL over the tables
    (leaving out ``ignore_content``, by default the contents of hand-made envelopes)."""
    client = settings.redis.client(decode_responses=True)
    if ignore_content is None:
        ignore_content = hand_made_content(settings)
    per_content, buckets = sql_state(settings)
    mismatches: list[str] = []
    for content_id, expected in per_content.items():
        got = client.hgetall(f"engagement:content:{content_id}")
        for field, value in expected.items():
            if abs(float(got.get(field, 0)) - value) > TOLERANCE:
                mismatches.append(f"{content_id} {field}: redis {got.get(field)} sql {value}")
    board = board_key(settings.leaderboard.window_minutes)
    first = int(client.get(f"{board}:from") or 0)
    now_minute = int(time.time() // 60)
    horizon = now_minute - settings.leaderboard.window_minutes - settings.leaderboard.allowed_lateness_minutes + 2
    by_minute: dict[int, dict[str, float]] = defaultdict(dict)
    for (minute, content_id), seconds in buckets.items():
        by_minute[minute][content_id] = seconds
    checked_buckets = 0
    for minute in range(horizon, now_minute + 1):
        redis_bucket = {
            m: s
            for m, s in client.zrange(f"engagement:minute:{minute}", 0, -1, withscores=True)
            # A bucket keeps a member whose seconds sum to zero (sinks.redis_leaderboard); SQL has none.
            if m not in ignore_content and abs(s) > TOLERANCE
        }
        sql_bucket = {c: s for c, s in by_minute.get(minute, {}).items() if abs(s) > TOLERANCE}
        if set(redis_bucket) != set(sql_bucket) or any(
            abs(redis_bucket[c] - sql_bucket[c]) > TOLERANCE for c in sql_bucket
        ):
            mismatches.append(f"minute {minute}: redis {len(redis_bucket)} members, sql {len(sql_bucket)}")
        checked_buckets += 1
    expected_board: dict[str, float] = defaultdict(float)
    for minute in range(first, first + settings.leaderboard.window_minutes):
        for content_id, seconds in by_minute.get(minute, {}).items():
            expected_board[content_id] += seconds
    redis_board = {m: s for m, s in client.zrange(board, 0, -1, withscores=True) if m not in ignore_content}
    for content_id, seconds in expected_board.items():
        if abs(redis_board.get(content_id, 0.0) - seconds) > TOLERANCE:
            mismatches.append(f"board {content_id}: redis {redis_board.get(content_id)} sql {seconds}")
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"
    return {"contents": len(per_content), "buckets": checked_buckets, "board": len(expected_board)}
