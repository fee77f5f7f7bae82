"""The HTTP sink against a scripted endpoint: payload, headers, outcomes per change, breaker, letters."""

import httpx
import msgspec
import orjson
import pytest
from prometheus_client import REGISTRY

from infra.settings import HttpSinkSettings
from sinks.contract import Batch, Retry
from sinks.flush import Flusher
from sinks.http_payload import batch_key, retry_after_s
from sinks.http_routes import Match, Route, Threshold

from .fakes import Letters
from .http_fakes import Clock, Endpoint, Sleeps, enriched, http_sink, row


def batch(*records):
    return Batch(list(records), {}, {})


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"results": []})


def status(code: int, **headers: str):
    return lambda request: httpx.Response(code, headers=headers, text=f"body of {code}")


def flusher(sink, clock: Clock, letters: Letters | None = None):
    f = Flusher(sink, letters or Letters(), ["events"], owns_upstream_letters=True, clock=clock, sleep=Sleeps(clock))
    f.load()
    return f


def test_each_change_carries_its_key_row_metrics_and_source_position():
    endpoint = Endpoint(ok)
    sink = http_sink(endpoint)
    assert sink.write(batch(enriched(7, "u", before=row(7, "play"), after=row(7, "finish")))).complete
    [request] = endpoint.requests
    body = orjson.loads(request.content)
    assert body == {
        "endpoint": "default",
        "changes": [
            {
                "idempotency_key": "events/1/7",
                "op": "u",
                "id": 7,
                "content_id": "c-1",
                "event_type": "finish",
                "content_type": "video",
                "device": "ios",
                "user_id": "u-1",
                "event_ts": "2026-12-02T03:00:00Z",
                "duration_ms": 300000,
                "engagement_seconds": 300.0,
                "engagement_pct": 50.0,
                "source": {
                    "topic": "events",
                    "partition": 1,
                    "offset": 7,
                    "sequence": [10, 27],
                    "commit_ts_ms": 1764644400000,
                },
            }
        ],
    }
    assert request.headers["Idempotency-Key"] == batch_key(["events/1/7"])
    assert request.headers["Idempotency-Key"].startswith('"') and request.headers["Idempotency-Key"].endswith('"')
    assert request.headers["Content-Type"] == "application/json"


def test_a_delete_carries_its_before_image():
    endpoint = Endpoint(ok)
    http_sink(endpoint).write(batch(enriched(3, "d", before=row(3, "pause"))))
    change = orjson.loads(endpoint.requests[0].content)["changes"][0]
    assert (change["op"], change["id"], change["event_type"]) == ("d", 3, "pause")


def test_the_batch_key_is_the_same_for_the_same_changes_and_differs_otherwise():
    assert batch_key(["a", "b"]) == batch_key(["a", "b"])
    assert batch_key(["a", "b"]) != batch_key(["a", "c"])


def test_extra_headers_and_the_auth_token_are_sent():
    endpoint = Endpoint(ok)
    settings = HttpSinkSettings(url="http://x/y", headers={"X-Tenant": "news"}, auth_token="s3cret", concurrency=1)
    http_sink(endpoint, settings).write(batch(enriched(1)))
    headers = endpoint.requests[0].headers
    assert (headers["X-Tenant"], headers["Authorization"]) == ("news", "Bearer s3cret")


def test_a_flush_is_split_into_posts_of_the_batch_size():
    endpoint = Endpoint(ok)
    settings = HttpSinkSettings(url="http://x/y", batch_max_records=2, concurrency=2)
    sink = http_sink(endpoint, settings)
    assert sink.limits.max_records == 4
    assert sink.write(batch(*(enriched(i) for i in range(5)))).complete
    assert sorted(len(orjson.loads(r.content)["changes"]) for r in endpoint.requests) == [1, 2, 2]


def test_changes_the_rules_do_not_select_are_applied_without_a_request():
    endpoint = Endpoint(ok)
    route = Route("finishes", "http://x/y", {}, (Match(event_type=frozenset({"finish"})),))
    sink = http_sink(endpoint, route=route)
    outcome = sink.write(batch(enriched(1, after=row(1, "play")), enriched(2, after=row(2, "finish"))))
    assert outcome.complete
    assert endpoint.keys() == ["events/1/2"]


def test_a_4xx_goes_to_the_http_dead_letter_topic_with_status_and_body_excerpt():
    endpoint = Endpoint(status(403))
    clock = Clock()
    letters = Letters()
    sink = http_sink(endpoint, clock=clock)
    report = flusher(sink, clock, letters).flush([enriched(5)])
    [letter] = letters.sent
    assert letter.stage == "http_default"
    assert letter.reason == "HTTP 403 from default: body of 403"
    assert letter.value == b"original-5"
    headers = dict(letter.headers)
    assert headers["dlq.http.status"] == b"403"
    assert headers["dlq.http.endpoint"] == b"default"
    assert orjson.loads(headers["dlq.http.change"])["idempotency_key"] == "events/1/5"
    assert (report.retries, len(endpoint.requests)) == (0, 1)


def test_a_429_retry_after_is_honoured():
    endpoint = Endpoint(status(429, **{"Retry-After": "7"}), ok)
    clock = Clock()
    f = flusher(http_sink(endpoint, clock=clock), clock)
    report = f.flush([enriched(1)])
    assert f._sleep.slept == [7.0]
    assert (report.written, report.retries, len(endpoint.requests)) == (1, 1, 2)
    assert endpoint.keys(0) == endpoint.keys(1) == ["events/1/1"]


def test_retry_after_as_an_http_date():
    from datetime import UTC, datetime

    now = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC)
    assert retry_after_s("Wed, 02 Dec 2026 03:00:30 GMT", now) == 30.0
    assert retry_after_s("soon", now) is None


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (status(503), Retry("HTTP 503 from default: body of 503")),
        (status(500), Retry("HTTP 500 from default: body of 500")),
        (status(429, **{"Retry-After": "2"}), Retry("HTTP 429 from default: body of 429", 2.0)),
    ],
)
def test_retryable_statuses_are_retried(script, expected):
    outcome = http_sink(Endpoint(script)).write(batch(enriched(1)))
    assert outcome.retry == {0: expected} and outcome.rejected == {}


def test_retryable_statuses_are_configurable():
    settings = HttpSinkSettings(url="http://x/y", retryable_statuses="503", concurrency=1)
    outcome = http_sink(Endpoint(status(500)), settings).write(batch(enriched(1)))
    assert outcome.rejected == {0: "HTTP 500 from default: body of 500"} and outcome.retry == {}


def test_timeouts_and_connection_errors_are_retried():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    assert http_sink(Endpoint(refuse)).write(batch(enriched(1))).retry[0].reason == (
        "connection error: ConnectError: refused"
    )
    assert http_sink(Endpoint(slow)).write(batch(enriched(1))).retry[0].reason == "timed out: ReadTimeout: slow"


def test_per_change_results_give_each_change_its_own_outcome():
    def mixed(request):
        keys = [c["idempotency_key"] for c in orjson.loads(request.content)["changes"]]
        return httpx.Response(
            200,
            json={
                "results": [
                    {"idempotency_key": keys[0], "status": 201},
                    {"idempotency_key": keys[1], "status": 422, "error": "no such device"},
                    {"idempotency_key": keys[2], "status": 503, "error": "shard busy"},
                    {"idempotency_key": keys[3], "status": 409},
                ]
            },
        )

    outcome = http_sink(Endpoint(mixed)).write(batch(*(enriched(i) for i in range(4))))
    assert outcome.rejected == {1: "HTTP 422 for this change from default: no such device"}
    assert outcome.retry == {2: Retry("HTTP 503 for this change from default: shard busy")}


def test_a_batch_refused_as_a_whole_is_split_until_the_bad_change_is_alone():
    def refuse_bad(request):
        keys = [c["idempotency_key"] for c in orjson.loads(request.content)["changes"]]
        return httpx.Response(400, text="bad change") if "events/1/2" in keys else httpx.Response(200)

    endpoint = Endpoint(refuse_bad)
    outcome = http_sink(endpoint).write(batch(*(enriched(i) for i in range(4))))
    assert outcome.rejected == {2: "HTTP 400 from default: bad change"} and outcome.retry == {}
    assert [len(orjson.loads(r.content)["changes"]) for r in endpoint.requests] == [4, 2, 2, 1, 1]


def test_while_the_breaker_is_open_changes_wait_for_the_trial_without_a_request_and_no_letter():
    endpoint = Endpoint(status(503))
    clock = Clock()
    settings = HttpSinkSettings(url="http://x/y", breaker_fail_max=3, breaker_reset_timeout_s=10, concurrency=1)
    sink = http_sink(endpoint, settings, clock=clock)
    for i in range(3):
        assert sink.write(batch(enriched(i))).retry
    assert sink.gauges() == {"breaker_state": 2}
    clock.now += 4
    outcome = sink.write(batch(enriched(10), enriched(11)))
    why = "circuit breaker open for default: HTTP 503 from default: body of 503"
    assert outcome.rejected == {}
    assert outcome.retry == {0: Retry(why, 6.0), 1: Retry(why, 6.0)}  # until the half-open trial
    assert len(endpoint.requests) == 3
    assert dict(sink.letter_headers(enriched(10)))["dlq.http.status"] == b"circuit_open"


def test_after_the_reset_timeout_one_trial_closes_the_breaker_and_the_rest_goes_out():
    endpoint = Endpoint(status(503), status(503), ok)
    clock = Clock()
    settings = HttpSinkSettings(
        url="http://x/y", breaker_fail_max=2, breaker_reset_timeout_s=10, batch_max_records=1, concurrency=3
    )
    sink = http_sink(endpoint, settings, clock=clock)
    sink.write(batch(enriched(0)))
    sink.write(batch(enriched(0)))
    assert sink.gauges() == {"breaker_state": 2}
    assert breaker_series("default") == {"closed": 0, "half_open": 0, "open": 1}
    clock.now += 10.5
    outcome = sink.write(batch(enriched(1), enriched(2), enriched(3)))
    assert outcome.complete
    assert sink.gauges() == {"breaker_state": 0}
    assert breaker_series("default") == {"closed": 1, "half_open": 0, "open": 0}
    assert len(endpoint.requests) == 2 + 3


def breaker_series(endpoint: str) -> dict[str, float | None]:
    """``engagement_http_breaker_state`` of ``endpoint``, one value per state, as Prometheus has it."""
    return {
        state: REGISTRY.get_sample_value("engagement_http_breaker_state", {"endpoint": endpoint, "state": state})
        for state in ("closed", "half_open", "open")
    }


def test_a_failed_trial_opens_the_breaker_again_and_everything_waits_another_reset_timeout():
    endpoint = Endpoint(status(503))
    clock = Clock()
    settings = HttpSinkSettings(
        url="http://x/y", breaker_fail_max=1, breaker_reset_timeout_s=10, batch_max_records=1, concurrency=2
    )
    sink = http_sink(endpoint, settings, clock=clock)
    sink.write(batch(enriched(0)))
    clock.now += 11
    outcome = sink.write(batch(enriched(1), enriched(2)))
    assert outcome.rejected == {}
    assert outcome.retry[0] == Retry("HTTP 503 from default: body of 503", 10.0)
    assert outcome.retry[1].retry_after_s == 10.0
    assert sink.gauges() == {"breaker_state": 2}
    assert len(endpoint.requests) == 2


def test_429_and_4xx_do_not_count_against_the_breaker():
    settings = HttpSinkSettings(url="http://x/y", breaker_fail_max=2, concurrency=1)
    sink = http_sink(Endpoint(status(429), status(429), status(404), status(429)), settings)
    for i in range(4):
        sink.write(batch(enriched(i)))
    assert sink.gauges() == {"breaker_state": 0}


def test_positions_are_stored_after_the_flush_in_the_sinks_own_group():
    clock = Clock()
    sink = http_sink(Endpoint(ok), clock=clock)
    flusher(sink, clock).flush([enriched(4), enriched(5)])
    assert sink._positions.stored["events:1"].next_offset == 6
    assert sink._group == "group.sink.http_default"


def test_pct_thresholds_route_on_the_rows_percentage():
    route = Route("deep", "http://x/y", {}, (Match(engagement_pct=Threshold(gte=50)),))
    endpoint = Endpoint(ok)
    http_sink(endpoint, route=route).write(batch(enriched(1, pct=49.9), enriched(2, pct=50.0), enriched(3, pct=None)))
    assert endpoint.keys() == ["events/1/2"]


def keys_of(request):
    return [c["idempotency_key"] for c in orjson.loads(request.content)["changes"]]


def test_elasticsearch_style_error_objects_and_string_statuses_are_read():
    def bulk(request):
        k = keys_of(request)
        return httpx.Response(
            200,
            content=b"\xef\xbb\xbf\r\n"
            + orjson.dumps(
                {
                    "results": [
                        {"idempotency_key": k[0], "status": 400, "error": {"reason": "bad field"}},
                        {"idempotency_key": k[1], "status": "503"},
                    ]
                }
            ),
        )

    outcome = http_sink(Endpoint(bulk)).write(batch(enriched(0), enriched(1)))
    assert outcome.rejected == {0: 'HTTP 400 for this change from default: {"reason":"bad field"}'}
    assert outcome.retry == {1: Retry("HTTP 503 for this change from default: ")}


def test_unreadable_per_change_results_are_retried_never_taken_as_delivered():
    broken = lambda r: httpx.Response(200, json={"results": [{"status": 422}]})  # noqa: E731
    outcome = http_sink(Endpoint(broken)).write(batch(enriched(0)))
    assert outcome.retry[0].reason == (
        "HTTP 200 from default is not an acknowledgement (json-ack): "
        "results[0] has no string idempotency_key and integer status"
    )


def test_a_reply_that_cannot_be_decoded_is_retried_not_raised():
    gzip_lie = lambda r: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")  # noqa: E731
    outcome = http_sink(Endpoint(gzip_lie)).write(batch(enriched(0)))
    assert outcome.retry[0].reason.startswith("unreadable reply: DecodingError")


def test_a_retry_after_that_is_not_ascii_digits_is_ignored():
    assert retry_after_s("²") is None
    assert retry_after_s("١٢") is None  # Arabic-Indic digits: isdigit() says yes, float() agrees, HTTP says no


def test_an_endpoint_refusing_everything_alike_gets_a_bounded_number_of_split_requests():
    endpoint = Endpoint(status(400))
    settings = HttpSinkSettings(url="http://x/y", concurrency=1)
    outcome = http_sink(endpoint, settings).write(batch(*(enriched(i) for i in range(500))))
    assert len(outcome.rejected) == 500
    assert len(endpoint.requests) == 65  # the first, and two for each of 32 splits


def test_a_late_reply_does_not_close_an_open_breaker():
    clock = Clock()
    settings = HttpSinkSettings(url="http://x/y", breaker_fail_max=1, breaker_reset_timeout_s=10, concurrency=1)
    sink = http_sink(Endpoint(status(503), ok), settings, clock=clock)
    sink.write(batch(enriched(0)))
    assert sink.gauges() == {"breaker_state": 2}
    clock.now += 11
    sink._send(["events/1/1"], [b"{}"])  # a reply to a request sent before the breaker opened
    assert sink.gauges() == {"breaker_state": 2}


def test_columns_added_to_the_table_travel_in_extra_only_when_the_row_has_any():
    endpoint = Endpoint(ok)
    sink = http_sink(endpoint)
    added = msgspec.structs.replace(row(8), extra=(("referrer", "push"), ("score", None)))
    assert sink.write(batch(enriched(8, after=added), enriched(9))).complete
    [request] = endpoint.requests
    first, second = orjson.loads(request.content)["changes"]
    assert first["extra"] == {"referrer": "push", "score": None}
    assert "extra" not in second
