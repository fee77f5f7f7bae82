"""The pipeline's metrics, recorded twice: as Beam metrics and in Prometheus text format.

Beam's metrics go to the runner's own monitoring (Dataflow's job page and Cloud Monitoring, Flink's
metric reporters). On Prism nothing serves them while a job runs: the job's result has them at the
end, and a streaming job does not end. So every count, level and spread the transforms and sinks
record goes through here and also lands in ``prometheus_client``'s registry, which ``serve`` exposes
on ``METRICS_HOST:METRICS_PORT`` (``/metrics``) from the process that runs the DoFns: the job process
with Prism's ``LOOPBACK`` workers (``pipeline.worker`` calls ``serve``), which also merges the
endpoints of its worker processes (``PIPELINE_PRISM_WORKERS``: port + N), so one scrape sees the
whole job; on the Flink session cluster, each worker of a worker pool on the port its pool gives it
(``pipeline.sdk_worker``). On Dataflow, read the Beam side.

Every Prometheus name is declared once, in ``METRICS`` (docs/observability.md lists them), so a
typo fails at import rather than creating a new series. The handles (``counter``, ``gauge``,
``histogram``) are made in a DoFn's constructor or ``setup`` and pickle with it: they hold names
only, and find their Prometheus child on first use in the worker.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Literal

import httpx
from apache_beam.metrics import Metrics
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from infra.settings_views import MetricsSettings

__all__ = ["METRICS", "Count", "Level", "Spread", "counter", "gauge", "histogram", "serve", "worker_urls"]

_log = logging.getLogger(__name__)
_SCRAPE_TIMEOUT_S = 1.0
Kind = Literal["counter", "gauge", "histogram"]

# name -> (kind, help, label names). Counters get Prometheus's "_total" suffix from the client.
METRICS: Final[dict[str, tuple[Kind, str, tuple[str, ...]]]] = {
    "engagement_build_info": ("gauge", "Always 1; the labels say what runs", ("version", "python", "beam")),
    "engagement_source_records": ("counter", "Kafka records read by the source, all topics", ()),
    "engagement_source_idle_calls": ("counter", "Source calls that found nothing to read", ()),
    "engagement_source_offset_out_of_range": (
        "counter",
        "Stored positions found outside a partition's log (retention passed them); read from the log start",
        (),
    ),
    "engagement_source_lag_records": (
        "gauge",
        "Records between a lane's source position and the partition's end offset",
        ("lane", "topic", "partition"),
    ),
    "engagement_decode": ("counter", "Records decoded, by topic kind and outcome", ("kind", "outcome")),
    "engagement_join": (
        "counter",
        "The content join's outcomes: parked, content_missing, reparked, unparked, park_expired, failed",
        ("outcome",),
    ),
    "engagement_content_view_reader_restarts": (
        "counter",
        "Times a content view's reader thread failed and was started again (it resumes where it was)",
        ("topic",),
    ),
    "engagement_content_view_last_poll_timestamp_seconds": (
        "gauge",
        "When a content view's reader last polled its topic (a stale value: the reader is stuck or dead)",
        ("topic",),
    ),
    "engagement_sink_records": (
        "counter",
        "Records a sink handled, by outcome: written, replays_skipped, resends_skipped, parked_duplicates_skipped",
        ("sink", "outcome"),
    ),
    "engagement_sink_flushes": ("counter", "Flushes a sink completed", ("sink",)),
    "engagement_sink_retries": ("counter", "Flush attempts a sink retried after a transient failure", ("sink",)),
    "engagement_sink_position_conflicts": (
        "counter",
        "Flushes refused because the stored positions had moved (another writer); reloaded and redone",
        ("sink",),
    ),
    "engagement_sink_sequence_regressions": (
        "counter",
        "Sequence marks found wrong and replaced, by partition and kind: unseen_gap, later_commit "
        "(the source's LSNs went back: a restore or failover), implausible_mark (docs/delivery.md)",
        ("sink", "partition", "kind"),
    ),
    "engagement_sink_flush_seconds": ("histogram", "Time to apply one flush, retries included", ("sink",)),
    "engagement_sink_commit_lag_seconds": (
        "histogram",
        "Postgres commit -> applied by the sink, for the newest change of each flush",
        ("sink",),
    ),
    "engagement_sink_last_flush_timestamp_seconds": ("gauge", "When a sink last completed a flush", ("sink",)),
    "engagement_leaderboard_future_buckets_skipped": (
        "counter",
        "Minute-bucket updates the leaderboard sink skipped: an event_ts beyond LEADERBOARD_MAX_CLOCK_SKEW_MINUTES",
        ("sink",),
    ),
    "engagement_dead_letters": ("counter", "Dead letters produced, by stage", ("stage",)),
    "engagement_http_breaker_state": (
        "gauge",
        "An HTTP endpoint's circuit breaker: 1 for its current state (closed, half_open, open), 0 for the others",
        ("endpoint", "state"),
    ),
    "engagement_http_reply_problems": (
        "counter",
        "HTTP requests whose changes were retried or dead-lettered for a reason other than a status: "
        "timeout, connection, unreadable, bad_reply, too_large, too_deep, error",
        ("endpoint", "problem"),
    ),
}
# Flushes take milliseconds to seconds; the commit lag spans the board's 100 ms goal and outages.
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_TYPES: Final = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}

_families: dict[str, Any] = {}
_families_lock = threading.Lock()
_served: dict[tuple[str, int], int] = {}


def _family(name: str, registry: CollectorRegistry = REGISTRY) -> Any:
    with _families_lock:
        family = _families.get(name)
        if family is None:
            kind, help_text, labels = METRICS[name]
            extra = {"buckets": _BUCKETS} if kind == "histogram" else {}
            family = _families[name] = _TYPES[kind](name, help_text, labels, registry=registry, **extra)
        return family


class _Handle:
    """A metric with its labels fixed, and optionally its Beam twin; pickles as names."""

    kind: Kind

    def __init__(self, name: str, labels: dict[str, str], beam: tuple[str, str] | None) -> None:
        declared = METRICS[name]
        if declared[0] != self.kind:
            raise ValueError(f"{name} is a {declared[0]}, not a {self.kind}")
        if set(labels) != set(declared[2]):
            raise ValueError(f"{name} needs labels {declared[2]}, got {tuple(labels)}")
        self.name = name
        self.labels = {k: str(v) for k, v in labels.items()}
        self.beam = beam
        self._child: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_child": None}

    def child(self) -> Any:
        if self._child is None:
            family = _family(self.name)
            self._child = family.labels(**self.labels) if self.labels else family
        return self._child


class Count(_Handle):
    kind = "counter"

    def __init__(self, name: str, labels: dict[str, str], beam: tuple[str, str] | None) -> None:
        super().__init__(name, labels, beam)
        self._beam = None if beam is None else Metrics.counter(*beam)

    def inc(self, n: int = 1) -> None:
        if n:
            self.child().inc(n)
            if self._beam is not None:
                self._beam.inc(n)


class Level(_Handle):
    kind = "gauge"

    def __init__(self, name: str, labels: dict[str, str], beam: tuple[str, str] | None) -> None:
        super().__init__(name, labels, beam)
        self._beam = None if beam is None else Metrics.gauge(*beam)

    def set(self, value: float) -> None:
        self.child().set(value)
        if self._beam is not None:
            self._beam.set(int(value))

    def track(self, value: Callable[[], float]) -> None:
        """From now on Prometheus reads ``value()`` at each scrape; ``set`` then feeds the Beam twin."""
        self.child().set_function(value)


class Spread(_Handle):
    """A histogram in seconds; its Beam twin is a distribution in milliseconds (Beam's are integers)."""

    kind = "histogram"

    def __init__(self, name: str, labels: dict[str, str], beam: tuple[str, str] | None) -> None:
        super().__init__(name, labels, beam)
        self._beam = None if beam is None else Metrics.distribution(*beam)

    def observe(self, seconds: float) -> None:
        self.child().observe(seconds)
        if self._beam is not None:
            self._beam.update(int(seconds * 1000))


def counter(metric: str, beam: tuple[str, str] | None = None, /, **labels: str) -> Count:
    return Count(metric, labels, beam)


def gauge(metric: str, beam: tuple[str, str] | None = None, /, **labels: str) -> Level:
    return Level(metric, labels, beam)


def histogram(metric: str, beam: tuple[str, str] | None = None, /, **labels: str) -> Spread:
    return Spread(metric, labels, beam)


def worker_urls(settings: MetricsSettings, workers: int) -> list[str]:
    """The endpoints of a Prism job's worker processes 1 to ``workers - 1`` (the job process is
    worker 0): each serves on the job's port + its number (``pipeline.runners``, "Workers")."""
    if settings.port == 0:
        return []
    return [f"http://{settings.host}:{settings.port + n}/metrics" for n in range(1, workers)]


class _Merged:
    """This process's registry and the scrapes of ``urls``, as one registry: what the worker
    processes of one job count, seen in one scrape. Counters, histograms and summaries are added
    up; gauges take the highest value (each worker reads its own partitions, so a labelled gauge
    is mostly one process's); ``_created`` the earliest. An endpoint that does not answer (a worker
    starting or restarting) is left out of that scrape."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = urls

    def collect(self) -> Iterator[Metric]:
        families: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
        scraped: list[Iterable[Metric]] = [REGISTRY.collect()]
        for url in self._urls:
            try:
                scraped.append(text_string_to_metric_families(httpx.get(url, timeout=_SCRAPE_TIMEOUT_S).text))
            except httpx.HTTPError:
                continue
        for source in scraped:
            for family in source:
                merged, values = families.setdefault(
                    family.name, (Metric(family.name, family.documentation, family.type, family.unit), {})
                )
                adds = family.type in ("counter", "histogram", "summary", "gaugehistogram")
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    old = values.get(key)
                    if old is None:
                        values[key] = sample.value
                    elif sample.name.endswith("_created"):
                        values[key] = min(old, sample.value)
                    else:
                        values[key] = old + sample.value if adds else max(old, sample.value)
        for merged, values in families.values():
            for (name, labels), value in values.items():
                merged.add_sample(name, dict(labels), value)
            yield merged


def build_info() -> None:
    """``engagement_build_info``: the project's, Python's and Beam's versions, as a series of value 1."""
    try:
        version = importlib.metadata.version("engagement-pipeline")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        version = "unknown"
    beam = importlib.metadata.version("apache-beam")
    gauge("engagement_build_info", version=version, python=platform.python_version(), beam=beam).set(1)


def serve(settings: MetricsSettings, also: list[str] | None = None) -> int | None:
    """Serve ``/metrics`` on the configured port, once per process; the port, or None when off.
    ``also``: endpoints of the job's other processes, merged into every scrape (``_Merged``).

    A port already taken (two worker processes on one host) is logged and skipped: metrics must
    never stop the job."""
    if settings.port == 0:
        return None
    build_info()
    key = (settings.host, settings.port)
    with _families_lock:
        if key in _served:
            return _served[key]
        try:
            registry = _Merged(also) if also else REGISTRY
            server, _ = start_http_server(settings.port, addr=settings.host, registry=registry)  # type: ignore[arg-type]
        except OSError as exc:
            _log.warning("metrics not served on %s:%d: %s", settings.host, settings.port, exc)
            return None
        _served[key] = server.server_port
        _log.info("metrics on http://%s:%d/metrics", settings.host, server.server_port)
        return server.server_port
