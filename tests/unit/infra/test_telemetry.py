import importlib.metadata
import pickle
import platform
import socket

import httpx
import pytest
from prometheus_client import REGISTRY

from infra import telemetry
from infra.settings_views import MetricsSettings


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_counter_counts_in_prometheus_with_its_labels():
    before = value("engagement_sink_records_total", sink="unit_a", outcome="written") or 0.0
    count = telemetry.counter(
        "engagement_sink_records", ("unit_a", "records_written"), sink="unit_a", outcome="written"
    )
    count.inc(3)
    count.inc(0)
    count.inc()
    assert value("engagement_sink_records_total", sink="unit_a", outcome="written") == before + 4


def test_a_handle_pickles_as_names_and_finds_its_child_again():
    count = telemetry.counter("engagement_dead_letters", stage="unit_pickle")
    count.inc(2)
    copy = pickle.loads(pickle.dumps(count))
    copy.inc(5)
    assert value("engagement_dead_letters_total", stage="unit_pickle") == 7


def test_a_histogram_observes_seconds():
    spread = telemetry.histogram("engagement_sink_flush_seconds", sink="unit_h")
    spread.observe(0.02)
    spread.observe(0.2)
    assert value("engagement_sink_flush_seconds_count", sink="unit_h") == 2
    assert value("engagement_sink_flush_seconds_bucket", sink="unit_h", le="0.025") == 1
    assert value("engagement_sink_flush_seconds_sum", sink="unit_h") == pytest.approx(0.22)


def test_undeclared_names_wrong_kinds_and_wrong_labels_are_refused():
    with pytest.raises(KeyError):
        telemetry.counter("engagement_typo")
    with pytest.raises(ValueError, match="is a gauge, not a counter"):
        telemetry.counter("engagement_sink_last_flush_timestamp_seconds", sink="s")
    with pytest.raises(ValueError, match="needs labels"):
        telemetry.counter("engagement_sink_flushes", endpoint="x")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_exposes_the_registry_once_per_process_and_is_off_at_port_0():
    assert telemetry.serve(MetricsSettings(port=0)) is None
    port = free_port()
    settings = MetricsSettings(host="127.0.0.1", port=port)
    assert telemetry.serve(settings) == port
    assert telemetry.serve(settings) == port  # a second call does not bind again
    telemetry.counter("engagement_join", outcome="unit_serve").inc(9)
    body = httpx.get(settings.url, timeout=5).text
    assert 'engagement_join_total{outcome="unit_serve"} 9.0' in body


def test_a_taken_port_is_skipped_not_raised():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert telemetry.serve(MetricsSettings(host="127.0.0.1", port=taken.getsockname()[1])) is None


def test_the_job_endpoint_merges_its_worker_processes():
    """A worker process's endpoint (here a registry of its own on another port) is merged into the
    job's: counters added up, gauges the highest, series of one process kept as they are."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    worker = CollectorRegistry()
    joins = Counter("engagement_join", "", ["outcome"], registry=worker)
    joins.labels(outcome="unit_merge").inc(5)
    joins.labels(outcome="unit_worker_only").inc(2)
    Gauge("engagement_source_lag_records", "", ["lane", "topic", "partition"], registry=worker).labels(
        lane="unit", topic="unit", partition="1"
    ).set(7)
    worker_port = free_port()
    start_http_server(worker_port, addr="127.0.0.1", registry=worker)
    job = MetricsSettings(host="127.0.0.1", port=free_port())
    urls = [f"http://127.0.0.1:{worker_port}/metrics", f"http://127.0.0.1:{free_port()}/metrics"]  # one down
    assert telemetry.serve(job, also=urls) == job.port
    telemetry.counter("engagement_join", outcome="unit_merge").inc(3)
    telemetry.gauge("engagement_source_lag_records", lane="unit", topic="unit", partition="1").set(4)
    body = httpx.get(job.url, timeout=5).text
    assert 'engagement_join_total{outcome="unit_merge"} 8.0' in body
    assert 'engagement_join_total{outcome="unit_worker_only"} 2.0' in body
    assert 'engagement_source_lag_records{lane="unit",partition="1",topic="unit"} 7.0' in body
    assert body.count("# TYPE engagement_join_total counter") + body.count("# TYPE engagement_join counter") == 1


def test_worker_urls_follow_the_job_port():
    settings = MetricsSettings(host="127.0.0.1", port=59464)
    assert telemetry.worker_urls(settings, 3) == ["http://127.0.0.1:59465/metrics", "http://127.0.0.1:59466/metrics"]
    assert telemetry.worker_urls(settings, 1) == [] and telemetry.worker_urls(MetricsSettings(port=0), 3) == []


def test_every_served_endpoint_says_which_versions_run():
    job = MetricsSettings(host="127.0.0.1", port=free_port())
    assert telemetry.serve(job) == job.port
    lines = httpx.get(job.url, timeout=5).text.splitlines()
    [info] = [line for line in lines if line.startswith("engagement_build_info{")]
    beam = importlib.metadata.version("apache-beam")
    assert f'beam="{beam}"' in info and f'python="{platform.python_version()}"' in info
    assert info.endswith(" 1.0")
