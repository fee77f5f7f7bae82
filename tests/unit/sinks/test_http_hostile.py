"""A hostile or broken endpoint: replies too large, too deep, too slow or not an acknowledgement are
retried or dead-lettered, never believed and never raised; an open breaker pauses, never drops."""

import socket
import threading
import time
from typing import ClassVar

import apache_beam as beam
import httpx
import pytest

from infra.settings import HttpSinkSettings, KafkaSettings
from infra.settings_http import start_ms
from sinks.base import SinkWriteFn
from sinks.contract import Batch
from sinks.flush import Flusher
from sinks.http import HttpSink
from sinks.http_client import make_client
from sinks.http_routes import Route, everything

from .fakes import Letters
from .http_fakes import Clock, Endpoint, MemoryPositions, Sleeps, enriched, http_sink

HTML = "<!DOCTYPE html><html><body>Bad gateway, but 200</body></html>"


def batch(*records):
    return Batch(list(records), {}, {})


def deep(levels: int = 5_000) -> bytes:
    return b'{"results":' + b"[" * levels + b"]" * levels + b"}"


def reply(code: int = 200, **kwargs):
    return lambda request: httpx.Response(code, **kwargs)


def flush(sink, clock: Clock, *records):
    letters = Letters()
    f = Flusher(sink, letters, ["events"], owns_upstream_letters=True, clock=clock, sleep=Sleeps(clock))
    f.load()
    return f.flush(list(records)), letters.sent


def status_of(sink, record) -> bytes:
    return dict(sink.letter_headers(record))["dlq.http.status"]


@pytest.mark.parametrize(
    ("handler", "status", "why"),
    [
        (reply(text=HTML, headers={"Content-Type": "text/html"}), b"bad_reply", "the body is not a JSON object"),
        (reply(text="OK"), b"bad_reply", "the body is not a JSON object: OK"),
        (reply(json=[1, 2]), b"bad_reply", "the body is not a JSON object"),
        (reply(content=b"{not json"), b"bad_reply", "the body is not valid JSON"),
        (reply(content=deep()), b"too_deep", "nested deeper than the decoder allows"),
        (reply(content=b'{"results": "' + b"x" * 2_000_000 + b'"}'), b"too_large", "over 1048576 bytes"),
    ],
)
def test_a_2xx_that_is_not_an_ack_is_retried_never_delivered(handler, status, why):
    sink = http_sink(Endpoint(handler))
    record = enriched(1)
    outcome = sink.write(batch(record))
    assert list(outcome.retry) == [0] and outcome.rejected == {}
    assert outcome.retry[0].reason.startswith("HTTP 200 from default is not an acknowledgement (json-ack): ")
    assert why in outcome.retry[0].reason
    assert status_of(sink, record) == status
    assert sink.gauges() == {"breaker_state": 0}  # it answered: the budget decides, not the breaker


@pytest.mark.parametrize(
    "handler",
    [reply(204), reply(200), reply(202, content=b"  \r\n"), reply(json={}), reply(json={"ok": True, "results": []})],
)
def test_an_empty_body_or_a_json_object_is_an_ack(handler):
    assert http_sink(Endpoint(handler)).write(batch(enriched(1))).complete


def test_any_2xx_believes_a_page_as_before_but_never_a_json_object_it_cannot_read():
    settings = HttpSinkSettings(url="http://x/y", concurrency=1, accept="any-2xx")
    assert http_sink(Endpoint(reply(text=HTML)), settings).write(batch(enriched(1))).complete
    assert http_sink(Endpoint(reply(content=b"{broken")), settings).write(batch(enriched(1))).complete
    outcome = http_sink(Endpoint(reply(content=deep())), settings).write(batch(enriched(1)))
    assert list(outcome.retry) == [0]
    huge = b'{"results": [' + b" " * 2_000_000 + b"]}"
    assert list(http_sink(Endpoint(reply(content=huge)), settings).write(batch(enriched(1))).retry) == [0]


def test_the_contract_can_be_set_per_endpoint():
    route = Route("legacy", "http://x/y", {}, everything("http://x/y")[0].rules, accept="any-2xx")
    assert http_sink(Endpoint(reply(text=HTML)), route=route).write(batch(enriched(1))).complete


def test_bad_reply_dead_letter_refuses_at_once():
    settings = HttpSinkSettings(url="http://x/y", concurrency=1, bad_reply="dead_letter")
    sink = http_sink(Endpoint(reply(text=HTML)), settings)
    outcome = sink.write(batch(enriched(1)))
    assert list(outcome.rejected) == [0] and outcome.retry == {}
    assert status_of(sink, enriched(1)) == b"bad_reply"


def test_a_reply_past_the_limit_is_not_read_whole():
    chunks = []

    def endless():
        while True:
            chunks.append(1)
            yield b"x" * 65_536

    settings = HttpSinkSettings(url="http://x/y", concurrency=1, max_reply_bytes=100_000)
    sink = http_sink(Endpoint(reply(content=endless())), settings)
    outcome = sink.write(batch(enriched(1)))
    assert "over 100000 bytes" in outcome.retry[0].reason or "not a JSON object" in outcome.retry[0].reason
    assert len(chunks) == 2  # read up to the limit, then dropped


def test_any_exception_while_handling_a_reply_is_a_retry_not_raised():
    def explode(request):
        raise RuntimeError("boom")

    sink = http_sink(Endpoint(explode))
    outcome = sink.write(batch(enriched(1)))
    assert outcome.retry[0].reason == "error while handling the reply of default: RuntimeError: boom"
    assert status_of(sink, enriched(1)) == b"error"


def test_a_deep_reply_ends_as_a_dead_letter_after_the_budget_with_its_reason():
    clock = Clock()
    sink = http_sink(Endpoint(reply(content=deep())), clock=clock)
    report, letters = flush(sink, clock, enriched(1), enriched(2))
    assert report.written == 0 and len(letters) == 2
    assert letters[0].reason.startswith("gave up after 30 s of retries: HTTP 200 from default is not an ack")
    assert dict(letters[0].headers)["dlq.http.status"] == b"too_deep"


class Trickle:
    """A real socket server answering 200 with a small JSON object, one byte at a time."""

    def __init__(self, every_s: float, headers_too: bool) -> None:
        self.every_s = every_s
        self.headers_too = headers_too
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/ingest"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        body = b"{" + b" " * 60 + b"}"
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        with conn:
            conn.recv(65_536)
            if not self.headers_too:
                conn.sendall(head)
            for byte in (head if self.headers_too else b"") + body:
                if self.stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(self.every_s)

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.mark.parametrize("headers_too", [False, True])
def test_a_server_trickling_bytes_times_out_at_the_request_deadline(headers_too):
    # Each byte comes well within the read timeout; only the request's deadline can end it.
    server = Trickle(0.05, headers_too)
    try:
        settings = HttpSinkSettings(url=server.url, concurrency=1, request_timeout_s=5, request_deadline_s=0.5)
        route = everything(server.url)[0]
        sink = HttpSink(
            route,
            settings,
            KafkaSettings(),
            "group",
            None,
            client_factory=lambda: make_client(1.0, 5.0, 1),
            positions_factory=MemoryPositions,
        )
        sink.open()
        outcome = sink.write(batch(enriched(1)))
        sink.close()
    finally:
        server.close()
    assert list(outcome.retry) == [0]
    assert outcome.retry[0].reason.startswith("timed out (HTTP_SINK_REQUEST_DEADLINE_S, 0.5 s): ReadTimeout")


def test_an_open_breaker_pauses_the_lane_and_nothing_is_dead_lettered_however_long_the_outage():
    clock = Clock()
    settings = HttpSinkSettings(url="http://x/y", concurrency=1, breaker_fail_max=2, breaker_reset_timeout_s=10)
    down = lambda r: httpx.Response(503, text="down")  # noqa: E731
    endpoint = Endpoint(*([down] * 30), reply(json={}))
    sink = http_sink(endpoint, settings, clock=clock)
    began = clock.now
    report, letters = flush(sink, clock, enriched(1), enriched(2))
    assert letters == [] and report.written == 2
    assert clock.now - began > 250  # far past the 30 s budget: the outage does not spend it
    assert len(endpoint.requests) == 31  # one trial per reset timeout while open, not a request per retry
    assert sink.gauges() == {"breaker_state": 0}


def test_the_outage_budget_dead_letters_what_waited_longer():
    clock = Clock()
    settings = HttpSinkSettings(
        url="http://x/y", concurrency=1, breaker_fail_max=1, breaker_reset_timeout_s=10, outage_budget_s=60
    )
    sink = http_sink(Endpoint(reply(503, text="down")), settings, clock=clock)
    began = clock.now
    report, letters = flush(sink, clock, enriched(1))
    assert report.written == 0 and len(letters) == 1
    assert letters[0].reason.startswith("gave up after 60 s (HTTP_SINK_OUTAGE_BUDGET_S): ")
    assert 60 <= clock.now - began <= 75
    assert dict(letters[0].headers)["dlq.http.change"].startswith(b'{"idempotency_key":"events/1/1"')


def test_the_budget_still_applies_while_the_breaker_stays_closed():
    clock = Clock()
    sink = http_sink(Endpoint(reply(429, text="busy")), clock=clock)
    _, letters = flush(sink, clock, enriched(1))
    assert len(letters) == 1 and letters[0].reason == "gave up after 30 s of retries: HTTP 429 from default: busy"


def test_a_retry_after_past_the_budget_dead_letters_at_once():
    clock = Clock()
    sink = http_sink(
        Endpoint(reply(429, text="busy"), reply(429, text="busy", headers={"Retry-After": "3600"})), clock=clock
    )
    began = clock.now
    _, letters = flush(sink, clock, enriched(1))
    assert letters[0].reason.startswith("gave up: asked to wait 30 s, past the 30 s budget")
    assert clock.now - began < 30


SENT: list = []


class SharedLetters(Letters):
    def send(self, letters) -> None:
        SENT.extend(letters)


def hostile_sink() -> HttpSink:
    settings = HttpSinkSettings(
        url="http://x/y", concurrency=1, budget_s=0.3, initial_backoff_s=0.01, max_backoff_s=0.05
    )
    deep_reply = lambda r: httpx.Response(200, content=deep())  # noqa: E731
    return HttpSink(
        everything("http://x/y")[0],
        settings,
        KafkaSettings(),
        "group",
        None,
        client_factory=lambda: httpx.Client(transport=httpx.MockTransport(deep_reply)),
        positions_factory=MemoryPositions,
    )


def test_a_reply_that_breaks_the_decoder_never_escapes_the_dofn():
    """The failure of issue 24: a 200 nested 5,000 deep raised RecursionError out of the step."""
    SENT.clear()
    pipeline = beam.Pipeline()
    _ = (
        pipeline
        | beam.Create([[enriched(1), enriched(2)]])
        | beam.ParDo(SinkWriteFn(hostile_sink, SharedLetters, ["events"], max_latency_ms=0))
    )
    pipeline.run().wait_until_finish()
    assert sorted(letter.position.offset for letter in SENT) == [1, 2]
    assert {dict(letter.headers)["dlq.http.status"] for letter in SENT} == {b"too_deep"}


class StartPositions(MemoryPositions):
    calls: ClassVar[list] = []

    def start_at_end(self, topic):
        self.calls.append(("end", topic))
        self.store({f"{topic}:0": _pos(40), f"{topic}:1": _pos(41)})
        return {0: 40, 1: 41}

    def start_at_time(self, topic, ms):
        self.calls.append(("time", topic, ms))
        self.store({f"{topic}:0": _pos(7)})
        return {0: 7}


def _pos(offset):
    from sinks.positions import Position

    return Position(offset)


@pytest.mark.parametrize(
    ("start", "call"),
    [("latest", ("end", "events")), ("2026-12-01T00:00:00Z", ("time", "events", 1_796_083_200_000))],
)
def test_a_new_endpoint_starts_where_http_sink_start_says_once(start, call):
    StartPositions.calls = []
    settings = HttpSinkSettings(url="http://x/y", start=start)
    sink = HttpSink(everything("http://x/y")[0], settings, KafkaSettings(), "g", None, start_topics=["events"])
    sink._positions = StartPositions()
    first = sink.positions(["events"])
    assert StartPositions.calls == [call] and first
    assert sink.positions(["events"]) == first and len(StartPositions.calls) == 1  # stored: not again
    assert sink.positions(["backfill"]) == first and len(StartPositions.calls) == 1  # only its own topics


def test_earliest_stores_nothing():
    settings = HttpSinkSettings(url="http://x/y")
    sink = HttpSink(everything("http://x/y")[0], settings, KafkaSettings(), "g", None, start_topics=["events"])
    sink._positions = StartPositions()
    StartPositions.calls = []
    assert sink.positions(["events"]) == {} and StartPositions.calls == []


def test_http_sink_start_is_checked():
    assert start_ms("earliest") is None and start_ms("latest") == -1
    assert start_ms("2026-12-01T00:00:00") == 1_796_083_200_000  # no zone: UTC
    with pytest.raises(ValueError, match="not earliest, latest or an ISO 8601 time"):
        HttpSinkSettings(start="yesterday")
