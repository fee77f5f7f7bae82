"""The local HTTP receiver: its apps in-process (TestClient), and once as the stack runs it, for a real outage."""

import random
import socket
import time
import warnings
from types import SimpleNamespace

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from infra.http_receiver import app as app_module
from infra.http_receiver.app import control_app, has_idempotency_key, ingest_app
from infra.http_receiver.client import ReceiverClient, ReceiverError
from infra.http_receiver.state import Outage, Receiver, lag_summary
from infra.process import port_open
from infra.settings import HttpReceiverSettings
from infra.stack.http_receiver import HttpReceiver

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; with httpx (what the project declares) it
    # works the same and only warns.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

KEY_HEADER = {"Idempotency-Key": '"batch-1"'}


def change(key: str | None = "t/0/1", **fields) -> dict:
    base = {
        "idempotency_key": key,
        "op": "c",
        "id": 123,
        "content_id": "c-1",
        "event_type": "view",
        "content_type": "video",
        "device": "mobile",
        "user_id": "u1",
        "event_ts": "2026-12-02T03:00:00.123000Z",
        "duration_ms": 5000,
        "engagement_seconds": 5.0,
        "engagement_pct": 12.5,
        "source": {
            "topic": "engagement.public.engagement_events",
            "partition": 3,
            "offset": 1234,
            "sequence": [123456, 123789],
            "commit_ts_ms": 1764644400123,
        },
    }
    if key is None:
        del base["idempotency_key"]
    return {**base, **fields}


@pytest.fixture
def rx():
    state, outage = Receiver(), Outage()
    ingest = TestClient(ingest_app(state, outage))
    control = TestClient(control_app(state, outage))

    def post(changes, endpoint="default", headers=KEY_HEADER):
        return ingest.post(f"/ingest/{endpoint}", json={"endpoint": endpoint, "changes": changes}, headers=headers)

    with ingest, control:
        yield SimpleNamespace(state=state, outage=outage, ingest=ingest, control=control, post=post)


def stats(rx, **params) -> dict:
    response = rx.control.get("/stats", params=params)
    assert response.status_code == 200
    return response.json()


def test_first_receipt_is_201_and_a_resend_is_200(rx):
    first = rx.post([change("k1")])
    assert first.status_code == 200
    assert first.json() == {"results": [{"idempotency_key": "k1", "status": 201}]}
    # A retry of the same batch plus a new change, and a duplicate inside one request.
    again = rx.post([change("k1"), change("k2", id=124), change("k2", id=124)])
    assert again.json() == {
        "results": [
            {"idempotency_key": "k1", "status": 200},
            {"idempotency_key": "k2", "status": 201},
            {"idempotency_key": "k2", "status": 200},
        ]
    }
    counts = stats(rx)
    assert (counts["requests"], counts["changes"], counts["unique"], counts["duplicates"]) == (2, 4, 2, 2)
    assert counts["by_endpoint"] == {"default": {"requests": 2, "unique": 2, "duplicates": 2, "rejected": 0}}


def test_invalid_or_refused_changes_are_422_per_record_and_not_recorded(rx):
    rx.control.put("/faults", json={"reject_event_types": ["share"]})
    response = rx.post(
        [
            change(None),
            change("k-id", id="7"),
            change("k-op", op="x"),
            change("k-share", event_type="share"),
            "not an object",
            change("k-ok"),
        ]
    )
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"idempotency_key": None, "status": 422, "error": "idempotency_key must be a non-empty string"},
        {"idempotency_key": "k-id", "status": 422, "error": "id must be an integer"},
        {"idempotency_key": "k-op", "status": 422, "error": "op must be one of c, r, u, d"},
        {
            "idempotency_key": "k-share",
            "status": 422,
            "error": "event_type 'share' is refused (fault reject_event_types)",
        },
        {"idempotency_key": None, "status": 422, "error": "change must be a JSON object"},
        {"idempotency_key": "k-ok", "status": 201},
    ]
    assert [c["idempotency_key"] for c in rx.control.get("/changes").json()["changes"]] == ["k-ok"]
    counts = stats(rx)
    assert (counts["changes"], counts["unique"], counts["rejected"]) == (6, 1, 5)
    assert counts["by_endpoint"]["default"]["rejected"] == 5


def test_malformed_body_is_400(rx):
    not_json = rx.ingest.post("/ingest/default", content=b"{nope", headers=KEY_HEADER)
    assert (not_json.status_code, not_json.text) == (400, "body is not JSON")
    no_list = rx.ingest.post("/ingest/default", json={"changes": {"a": 1}}, headers=KEY_HEADER)
    assert (no_list.status_code, no_list.text) == (400, 'body must be a JSON object with a "changes" list')
    counts = stats(rx)
    assert (counts["requests"], counts["bad_requests"], counts["changes"]) == (2, 2, 0)


def test_injected_errors_record_nothing(rx):
    rx.control.put("/faults", json={"error_rate": 1})
    response = rx.post([change("k1")])
    assert (response.status_code, response.text) == (503, "injected failure")
    rx.control.put("/faults", json={"error_status": 500})
    assert rx.post([change("k1")]).status_code == 500
    counts = stats(rx)
    assert (counts["requests"], counts["injected_errors"], counts["changes"], counts["unique"]) == (2, 2, 0, 0)
    assert rx.control.get("/changes").json() == {"changes": []}


@pytest.mark.parametrize(("retry_after_s", "header"), [(1, "1"), (2.5, "3"), (0.2, "1")])
def test_throttle_is_429_with_an_integer_retry_after(rx, retry_after_s, header):
    rx.control.put("/faults", json={"throttle_rate": 1.0, "retry_after_s": retry_after_s})
    response = rx.post([change("k1")])
    assert (response.status_code, response.text, response.headers["Retry-After"]) == (429, "throttled", header)
    counts = stats(rx)
    assert (counts["throttled"], counts["unique"], counts["changes"]) == (1, 0, 0)


def test_lost_ack_records_yet_answers_503_and_the_retry_is_a_duplicate(rx):
    rx.control.put("/faults", json={"ack_loss_rate": 1})
    lost = rx.post([change("k1")])
    assert lost.status_code == 503
    rx.control.put("/faults", json={"ack_loss_rate": 0})
    assert rx.post([change("k1")]).json() == {"results": [{"idempotency_key": "k1", "status": 200}]}
    counts = stats(rx)
    assert (counts["ack_lost"], counts["unique"], counts["duplicates"], counts["changes"]) == (1, 1, 1, 2)


def test_seeded_faults_are_deterministic(rx):
    rx.control.put("/faults", json={"seed": 7, "throttle_rate": 0.5})
    first = [rx.post([]).status_code for _ in range(20)]
    rx.control.put("/faults", json={"seed": 7})
    assert [rx.post([]).status_code for _ in range(20)] == first
    draws = random.Random(7)
    assert first == [429 if draws.random() < 0.5 else 200 for _ in range(20)]


def test_stats_has_exactly_the_specified_keys(rx):
    assert stats(rx) == {
        "requests": 0,
        "requests_without_key": 0,
        "bad_requests": 0,
        "injected_errors": 0,
        "throttled": 0,
        "ack_lost": 0,
        "hostile_replies": 0,
        "changes": 0,
        "unique": 0,
        "duplicates": 0,
        "rejected": 0,
        "by_endpoint": {},
        "lag_ms": {"count": 0, "p50": None, "p90": None, "p99": None, "max": None},
    }


@pytest.mark.parametrize(
    ("header", "counted"),
    [(None, True), ("batch-1", True), ('"batch-1', True), ('"batch-1"', False), ('"a \\"b\\""', False)],
)
def test_requests_without_a_valid_key_header_are_counted(rx, header, counted):
    headers = {} if header is None else {"Idempotency-Key": header}
    assert rx.post([change("k1")], headers=headers).status_code == 200
    assert stats(rx)["requests_without_key"] == int(counted)
    assert has_idempotency_key(header) is not counted


def test_lag_is_nearest_rank_over_first_receipts_in_the_window(rx, monkeypatch):
    clock = iter([1000, 2000, 3000, 4000])
    monkeypatch.setattr(app_module, "now_ms", lambda: next(clock))
    # Received at 1000, 2000 and 3000 ms with lags 10, 20 and 30 ms.
    for key, commit_ts_ms in (("a", 990), ("b", 1980), ("c", 2970)):
        rx.post([change(key, source={"partition": 0, "offset": 1, "commit_ts_ms": commit_ts_ms})])
    rx.post([change("a")])  # a duplicate at 4000 adds no lag
    assert stats(rx)["lag_ms"] == {"count": 3, "p50": 20, "p90": 30, "p99": 30, "max": 30}
    assert stats(rx, since_ms=2000)["lag_ms"] == {"count": 2, "p50": 20, "p90": 30, "p99": 30, "max": 30}
    assert stats(rx, until_ms=3000)["lag_ms"] == {"count": 2, "p50": 10, "p90": 20, "p99": 20, "max": 20}
    assert stats(rx, since_ms=5000)["lag_ms"]["count"] == 0
    # The window restricts lag only.
    assert stats(rx, since_ms=5000)["unique"] == 3
    bad = rx.control.get("/stats", params={"since_ms": "soon"})
    assert (bad.status_code, bad.json()["field"]) == (400, "since_ms")


def test_lag_is_receipt_minus_commit_time(rx, monkeypatch):
    monkeypatch.setattr(app_module, "now_ms", lambda: 1764644400500)
    rx.post([change("k1"), change("k2", source={"partition": 1, "offset": 2})])
    assert stats(rx)["lag_ms"] == {"count": 1, "p50": 377, "p90": 377, "p99": 377, "max": 377}


def test_lag_summary_percentiles():
    assert lag_summary(list(range(100, 0, -1))) == {"count": 100, "p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert lag_summary([7]) == {"count": 1, "p50": 7, "p90": 7, "p99": 7, "max": 7}


def test_changes_lists_first_receipts_per_endpoint(rx, monkeypatch):
    monkeypatch.setattr(app_module, "now_ms", lambda: 1764644400500)
    rx.post([change("k1")], endpoint="board")
    rx.post([change("k2", id=9, op="d", engagement_seconds=None, source={"partition": 0, "offset": 5})], endpoint="crm")
    rx.post([change("k1")], endpoint="crm")  # new for crm: each endpoint dedupes on its own
    rx.post([change("k1")], endpoint="crm")  # seen by crm already
    board = {
        "idempotency_key": "k1",
        "endpoint": "board",
        "id": 123,
        "op": "c",
        "sequence": [123456, 123789],
        "partition": 3,
        "offset": 1234,
        "engagement_seconds": 5.0,
        "received_at_ms": 1764644400500,
    }
    crm = {
        "idempotency_key": "k2",
        "endpoint": "crm",
        "id": 9,
        "op": "d",
        "sequence": None,
        "partition": 0,
        "offset": 5,
        "engagement_seconds": None,
        "received_at_ms": 1764644400500,
    }
    crm_k1 = {**board, "endpoint": "crm"}
    assert rx.control.get("/changes").json() == {"changes": [board, crm, crm_k1]}
    assert rx.control.get("/changes", params={"endpoint": "crm"}).json() == {"changes": [crm, crm_k1]}
    assert rx.control.get("/changes", params={"endpoint": "none"}).json() == {"changes": []}
    assert stats(rx)["by_endpoint"] == {
        "board": {"requests": 1, "unique": 1, "duplicates": 0, "rejected": 0},
        "crm": {"requests": 3, "unique": 2, "duplicates": 1, "rejected": 0},
    }


def test_reset_clears_changes_and_counts_not_faults(rx):
    rx.control.put("/faults", json={"latency_ms": 1})
    rx.post([change("k1")])
    assert rx.control.post("/reset").json() == {"ok": True}
    assert stats(rx)["requests"] == 0
    assert rx.control.get("/changes").json() == {"changes": []}
    assert rx.control.get("/faults").json()["latency_ms"] == 1.0
    assert rx.post([change("k1")]).json()["results"][0]["status"] == 201


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"throttle_rate": 1.5}, "throttle_rate"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"error_rate": True}, "error_rate"),
        ({"error_status": 200}, "error_status"),
        ({"reject_event_types": "view"}, "reject_event_types"),
        ({"seed": 1.5}, "seed"),
        ({"latency_ms": 5, "down_for_s": "long"}, "down_for_s"),
        ({"throttle": 1}, "throttle"),
        ([1], "body"),
    ],
)
def test_a_bad_fault_field_is_named_and_nothing_applies(rx, patch, field):
    response = rx.control.put("/faults", json=patch)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}: ")
    assert rx.control.get("/faults").json()["latency_ms"] == 0.0


def test_faults_merge_and_delete_restores_defaults(rx):
    defaults = rx.control.get("/faults").json()
    assert defaults == {
        "down_until_ms": None,
        "latency_ms": 0.0,
        "throttle_rate": 0.0,
        "retry_after_s": 1.0,
        "error_rate": 0.0,
        "error_status": 503,
        "ack_loss_rate": 0.0,
        "reject_event_types": [],
        "seed": None,
        "hostile": None,
    }
    rx.control.put("/faults", json={"latency_ms": 2})
    merged = rx.control.put("/faults", json={"error_status": 502, "down_for_s": 60}).json()
    assert (merged["latency_ms"], merged["error_status"]) == (2.0, 502)
    assert merged["down_until_ms"] is not None
    down = rx.post([change("k1")])
    assert (down.status_code, down.text) == (503, "ingest is down")
    assert stats(rx)["injected_errors"] == 1
    assert rx.control.delete("/faults").json() == defaults
    assert rx.post([change("k1")]).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_refuses_connections_while_control_answers(tmp_path):
    settings = HttpReceiverSettings(port=free_port(), control_port=free_port())
    receiver = HttpReceiver(settings, tmp_path)
    client = ReceiverClient(settings.control_url)
    try:
        assert receiver.process.start(timeout=20) is True
        assert client.health() is True
        with httpx.Client(base_url=settings.url) as ingest:
            posted = ingest.post("/ingest/default", json={"changes": [change("k1")]}, headers=KEY_HEADER)
            assert posted.json() == {"results": [{"idempotency_key": "k1", "status": 201}]}
            began = time.monotonic()
            client.down(0.6)
            assert client.faults()["down_until_ms"] is not None
            # The kept-alive connection is closed too, so this is a new connect, refused.
            with pytest.raises(httpx.ConnectError):
                ingest.post("/ingest/default", json={"changes": []})
            assert not port_open(settings.host, settings.port)
            assert client.stats()["unique"] == 1
            with pytest.raises(ReceiverError, match="throttle_rate") as info:
                client.set_faults(throttle_rate=2)
            assert info.value.status_code == 400
            while not port_open(settings.host, settings.port):
                assert time.monotonic() - began < 5, "ingest did not come back"
                time.sleep(0.02)
            assert time.monotonic() - began >= 0.55
            assert client.faults()["down_until_ms"] is None
            again = ingest.post("/ingest/default", json={"changes": [change("k1")]}, headers=KEY_HEADER)
            assert again.json() == {"results": [{"idempotency_key": "k1", "status": 200}]}
        assert [c["idempotency_key"] for c in client.changes("default")] == ["k1"]
        assert client.set_faults(latency_ms=3)["latency_ms"] == 3.0
        assert client.clear_faults()["latency_ms"] == 0.0
        client.reset()
        assert client.stats(since_ms=0, until_ms=1)["requests"] == 0
    finally:
        client.close()
        receiver.process.stop(timeout=10)
    assert not receiver.process.running()
    with ReceiverClient(settings.control_url) as gone:
        assert gone.health() is False


def test_each_endpoint_dedupes_on_its_own():
    receiver = Receiver()
    change = {"idempotency_key": "t/0/1", "op": "c", "id": 1, "event_type": "finish", "source": {"commit_ts_ms": 1}}
    assert receiver.receive("everything", [change], 10)[0]["status"] == 201
    assert receiver.receive("finishes", [change], 11)[0]["status"] == 201
    assert receiver.receive("finishes", [change], 12)[0]["status"] == 200
    assert [c["endpoint"] for c in receiver.changes()] == ["everything", "finishes"]


def test_changes_can_be_limited_to_the_newest(rx):
    rx.post([change("k1"), change("k2", id=2), change("k3", id=3)])
    rx.post([change("k4", id=4)], endpoint="other")

    def keys(params):
        return [c["idempotency_key"] for c in rx.control.get("/changes", params=params).json()["changes"]]

    assert keys({"last": 2}) == ["k3", "k4"]
    assert keys({"last": 2, "endpoint": "default"}) == ["k2", "k3"]
    assert keys({}) == ["k1", "k2", "k3", "k4"]
    assert rx.control.get("/changes", params={"last": "x"}).status_code == 400


@pytest.mark.parametrize("mode", ["html", "deep"])
def test_a_hostile_reply_is_a_200_that_records_nothing(rx, mode):
    rx.control.put("/faults", json={"hostile": mode})
    reply = rx.post([change("k1")])
    assert reply.status_code == 200 and "results" not in (reply.text if mode == "html" else "")
    assert (stats(rx)["hostile_replies"], stats(rx)["unique"]) == (1, 0)
    rx.control.delete("/faults")
    assert rx.post([change("k1")]).status_code == 200 and stats(rx)["unique"] == 1


def test_an_unknown_hostile_mode_is_refused(rx):
    response = rx.control.put("/faults", json={"hostile": "rude"})
    assert response.status_code == 400 and response.json()["field"] == "hostile"
