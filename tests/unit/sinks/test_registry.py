"""PIPELINE_SINKS: which sinks run, in which lanes, and which lane produces upstream letters."""

import pytest

from sinks.registry import lanes


def names(setting: str) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(lane.topic, tuple(s.name for s in lane.sinks), lane.owns_upstream_letters) for lane in lanes(setting)]


def test_the_default_is_one_lane_per_topic_for_redis():
    assert names("redis") == [
        ("engagement", ("redis_leaderboard",), True),
        ("content", ("redis_content",), True),
    ]


def test_commas_make_lanes_and_plus_shares_one():
    assert names("redis,faulty") == [
        ("engagement", ("redis_leaderboard",), True),
        ("content", ("redis_content",), True),
        ("engagement", ("faulty",), False),
    ]
    assert names("faulty+redis") == [
        ("engagement", ("faulty", "redis_leaderboard"), True),
        ("content", ("redis_content",), True),
    ]


@pytest.mark.parametrize(("setting", "message"), [("redis,kafka", "unknown sink"), ("redis,redis", "named twice")])
def test_mistakes_are_refused_with_a_reason(setting, message):
    with pytest.raises(ValueError, match=message):
        lanes(setting)


def test_the_http_sink_is_one_sink_per_endpoint_and_off_when_not_configured():
    from infra.settings import REPO_ROOT, HttpSinkSettings, Settings

    assert [lane.topic for lane in lanes("redis,http", Settings(http_sink=HttpSinkSettings()))] == [
        "engagement",
        "content",
    ]
    one = lanes("http", Settings(http_sink=HttpSinkSettings(url="http://h/x", linger_ms=80)))
    [spec] = one[0].sinks
    assert (spec.name, spec.label, spec.topic, spec.max_latency_ms) == ("http_default", "HttpDefault", "engagement", 80)
    assert spec.dead_letter_topic == "engagement.dlq.http"
    routed = Settings(http_sink=HttpSinkSettings(routes_file=REPO_ROOT / "infra/http/routes.example.yaml"))
    [lane] = lanes("redis,http", routed)[2:]
    assert [s.name for s in lane.sinks] == ["http_analytics", "http_completions"]
    assert lane.owns_upstream_letters is False


def test_sinks_configured_by_the_settings_need_them():
    for setting in ("http", "redis,bigquery"):
        with pytest.raises(ValueError, match="configured by the settings"):
            lanes(setting)


def test_the_bigquery_sinks_wait_for_their_batch_as_long_as_the_settings_say():
    from infra.settings import BigQuerySettings, Settings

    [changes] = lanes("bigquery", Settings(bigquery=BigQuerySettings(linger_ms=250)))[0].sinks
    assert (changes.name, changes.max_latency_ms, changes.positions_in) == ("bigquery", 250, "kafka")
    [content] = lanes("bigquery", Settings())[1].sinks
    assert (content.name, content.max_latency_ms) == ("bigquery_content", 1_000)
