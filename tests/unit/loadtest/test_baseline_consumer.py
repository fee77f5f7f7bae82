"""The yardstick's sums (loadtest.baseline_consumer): the leaderboard sink's arithmetic, by hand."""

import fakeredis

from loadtest import baseline_consumer as baseline

CONTENT = {"c1": ("video", 100), "c2": ("unknown", None)}


def row(content_id: str, seconds: float, event_type: str = "play", ts: str = "2026-12-07T10:00:30Z") -> dict:
    return {"content_id": content_id, "duration_ms": int(seconds * 1000), "event_type": event_type, "event_ts": ts}


def test_an_update_takes_the_before_image_back_and_adds_the_after_image():
    sums: dict = {}
    buckets: dict = {}
    baseline.add(row("c1", 50), +1, CONTENT, sums, buckets)
    baseline.add(row("c1", 50), -1, CONTENT, sums, buckets)
    baseline.add(row("c1", 150, "finish"), +1, CONTENT, sums, buckets)
    minute = 29943960  # 2026-12-07T10:00Z in epoch minutes
    # events, total_seconds, plays, pauses, finishes, clicks, pct_sum, pct_count, over_100
    assert sums == {"c1": [1, 150.0, 0, 0, 1, 0, 150.0, 1, 1]}
    assert buckets == {(minute, "c1", "video"): 150.0}


def test_unknown_content_and_rows_without_content_add_nothing_and_no_length_no_pct():
    sums: dict = {}
    buckets: dict = {}
    baseline.add(row("nope", 5), +1, CONTENT, sums, buckets)
    baseline.add({"content_id": None, "duration_ms": 5}, +1, CONTENT, sums, buckets)
    baseline.add(row("c2", 5, "click"), +1, CONTENT, sums, buckets)
    assert sums == {"c2": [1, 5.0, 0, 0, 0, 1, 0.0, 0, 0]}


def test_minutes_from_iso_strings_and_micro_timestamps_agree():
    assert baseline.minute_of("2026-12-07T10:00:59.999999Z") == baseline.minute_of(1_796_637_659_999_999) == 29943960


def test_one_transaction_applies_sums_buckets_in_the_window_and_offsets(monkeypatch):
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(baseline.time, "time", lambda: 29943960 * 60 + 30)
    sums = {"c1": [2, 10.5, 2, 0, 0, 0, 0.0, 0, 0]}
    buckets = {(29943960, "c1", "video"): 10.5, (29943960 - 100, "c1", "video"): 1.0}
    baseline.apply(client, sums, buckets, {3: 42}, window=10, lateness=10)
    p = baseline.PREFIX
    assert client.hgetall(f"{p}engagement:content:c1") == {b"events": b"2", b"total_seconds": b"10.5", b"plays": b"2"}
    assert client.zscore(f"{p}top_engagement:10min", "c1") == 10.5
    assert client.zscore(f"{p}top_engagement:10min:video", "c1") == 10.5
    assert client.zscore(f"{p}engagement:minute:{29943960 - 100}", "c1") is None  # older than window + lateness
    assert client.hgetall(f"{p}positions") == {b"3": b"42"}
