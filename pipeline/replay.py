"""Replay one sink: send its records again from an offset or a time up to where it has got.

    python -m pipeline replay --sink bigquery --from-timestamp 2026-12-06T10:00:00Z
    python -m pipeline replay --sink http_analytics --from-offset 0          # every partition from 0
    python -m pipeline replay --sink bigquery --from-offset 3:1200,7:0       # some partitions only
    make replay SINK=bigquery FROM=2026-12-06T10:00:00Z                      # FROM: a time or offsets

How: a bounded ``python -m pipeline --bounded`` of the sink's group (``PIPELINE_SINKS``), with the
same transforms and the same sink driver, under a consumer group of its own,
``<PIPELINE_CONSUMER_GROUP>.replay-<id>``. The sinks that can be replayed keep their positions in
Kafka under ``<consumer group>.sink.<name>`` (``sinks.kafka_positions``), so that group is also a
positions namespace of its own: the replay stores the starting offsets there, and the run's stops
(``PIPELINE_STOP_OFFSETS``) are the positions the live sink has stored, read when the replay starts.
The live sink's positions are never written, so a running pipeline goes on as it was; the replay's
group and its lock are deleted at the end. A time maps to offsets with Kafka's ``offsets_for_times``
(the first record produced at or after it, per partition).

Only sinks idempotent by record id can be replayed: BigQuery (insertIds and the view that keeps the
latest change per event) and HTTP (idempotency keys). The Redis sinks apply increments, so a replay
would count twice: ``--sink redis_leaderboard`` is refused with a pointer to ``rebuild-redis``.
docs/operations.md ("Replay one sink") gives the guarantees and limits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime

from confluent_kafka import KafkaException

from infra.process import parent_death_signal
from infra.settings import REPO_ROOT, Settings
from pipeline.lanes import topic_name
from pipeline.progress import follow
from pipeline.rebuild import free_port
from pipeline.sources.offset_lookup import OffsetLookup
from sinks.contract import SinkUnavailable
from sinks.fencing import fence_key, lock_key
from sinks.kafka_positions import KafkaPositions, delete_groups, group_id
from sinks.positions import Position
from sinks.registry import SINKS, Lane, SinkSpec, specs

REFUSED_EXIT = 2


class ReplayRefused(ValueError):  # noqa: N818 - a state
    pass


@dataclass
class Report:
    sink: str
    topic: str
    group: str
    from_offsets: dict[int, int]
    stop_offsets: dict[int, int]  # the live sink's positions when the replay started
    records: int  # offsets in the range, tombstones included
    took_s: float = 0.0


def find(sink: str, settings: Settings) -> tuple[str, SinkSpec]:
    """The ``PIPELINE_SINKS`` name that runs ``sink``, and its spec; refuses sinks that cannot replay."""
    for name in SINKS:
        for spec in specs(name, settings):
            if spec.name != sink:
                continue
            if name == "redis":
                raise ReplayRefused(
                    f"sink {sink!r} cannot be replayed: its writes are increments, not idempotent by record "
                    "id, so a replay would count its records twice. Rebuild the Redis boards from the topics "
                    "instead: make rebuild-redis (python -m pipeline rebuild-redis)"
                )
            if spec.positions_in != "kafka":
                raise ReplayRefused(f"sink {sink!r} cannot be replayed: only BigQuery and HTTP sinks can")
            return name, spec
    known = [spec.name for name in SINKS for spec in specs(name, settings)]
    raise ReplayRefused(f"unknown sink {sink!r}; known: {', '.join(known)}")


def timestamp_ms(text: str) -> int:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ReplayRefused(f"--from-timestamp {text!r}: give a time zone (Z or +00:00)")
    return int(moment.timestamp() * 1000)


def offsets_arg(text: str) -> int | dict[int, int]:
    """``N`` (every partition) or ``P:N,P:N``."""
    try:
        if ":" not in text:
            return int(text)
        return {int(p): int(n) for p, n in (part.split(":") for part in text.split(",") if part)}
    except ValueError as exc:
        raise ReplayRefused(f"--from-offset {text!r}: give N or PARTITION:N,PARTITION:N") from exc


def replay_range(starts: dict[int, int], stops: dict[int, int]) -> dict[int, tuple[int, int]]:
    """``{partition: (from, stop)}`` for the partitions with something to send (pure)."""
    return {p: (start, stops[p]) for p, start in starts.items() if p in stops and start < stops[p]}


class Replay:
    def __init__(self, settings: Settings, sink: str, *, run_id: str | None = None) -> None:
        self.settings = settings
        self.group_name, self.spec = find(sink, settings)
        self.topic = topic_name(settings, Lane(self.spec.topic, (self.spec,), True))
        self.run_id = run_id or time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        self.group = f"{settings.pipeline.consumer_group}.replay-{self.run_id}"
        self.log_path = settings.stack.dir / "logs" / f"replay-{self.run_id}.log"

    def plan(self, *, at_ms: int | None = None, offsets: int | dict[int, int] | None = None) -> Report:
        lookup = OffsetLookup(self.settings.kafka.client_config())
        try:
            ends = lookup.ends(self.topic)
            starts = (
                lookup.at_time(self.topic, at_ms)
                if at_ms is not None
                else {p: offsets.get(p, ends[p]) if isinstance(offsets, dict) else offsets for p in ends}  # type: ignore[misc]
            )
        finally:
            lookup.close()
        live = KafkaPositions(
            self.settings.kafka.client_config(), group_id(self.settings.pipeline.consumer_group, self.spec.name)
        )
        try:
            stored = live.load([self.topic])
        finally:
            live.close()
        stops = {int(key.rpartition(":")[2]): position.next_offset for key, position in stored.items()}
        chosen = replay_range({p: int(o) for p, o in starts.items()}, stops)
        return Report(
            self.spec.name,
            self.topic,
            self.group,
            {p: start for p, (start, _) in chosen.items()},
            {p: stop for p, (_, stop) in chosen.items()},
            sum(stop - start for start, stop in chosen.values()),
        )

    def run(self, report: Report, *, progress: bool | None = None) -> Report:
        """Send the range; ``progress``: the bar on stderr (None: when it is a terminal)."""
        began = time.monotonic()
        if not report.records:
            return report
        try:
            self._store_starts(report)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                "PIPELINE_SINKS": self.group_name,
                "PIPELINE_CONSUMER_GROUP": self.group,
                "PIPELINE_STOP_OFFSETS": json.dumps({f"{self.topic}:{p}": o for p, o in report.stop_offsets.items()}),
                "PIPELINE_PRISM_PORT": str(free_port()),
                "METRICS_PORT": "0",
            }
            sent = KafkaPositions(self.settings.kafka.client_config(), group_id(self.group, self.spec.name))
            with self.log_path.open("ab") as log, contextlib.closing(sent):
                run = subprocess.Popen(
                    [sys.executable, "-m", "pipeline", "--bounded"],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=parent_death_signal(),  # the run dies with the command
                )
                code = follow(run, report.records, lambda: self._sent(sent, report), what=report.sink, show=progress)
            if code != 0:
                raise RuntimeError(f"the replay's bounded run exited with {code}; its log: {self.log_path}")
            self._check_done(report)
        finally:
            self._clean_up()
        report.took_s = round(time.monotonic() - began, 1)
        return report

    def _store_starts(self, report: Report) -> None:
        """The target sink starts at ``from``; every other sink of its lane at ``stop`` (sends nothing)."""
        for spec in specs(self.group_name, self.settings):
            if spec.topic != self.spec.topic:
                continue  # another lane: PIPELINE_STOP_OFFSETS names none of its partitions
            offsets = report.from_offsets if spec.name == self.spec.name else report.stop_offsets
            store = KafkaPositions(self.settings.kafka.client_config(), group_id(self.group, spec.name))
            try:
                store.store({f"{self.topic}:{p}": Position(o) for p, o in offsets.items()})
            finally:
                store.close()

    def _sent(self, store: KafkaPositions, report: Report) -> int | None:
        """Records of the range the replay's positions cover so far; None if Kafka does not answer."""
        try:
            got = {int(k.rpartition(":")[2]): p.next_offset for k, p in store.load([self.topic]).items()}
        except (SinkUnavailable, KafkaException):  # the bar waits; the run itself goes on
            return None
        return sum(
            min(max(got.get(p, start), start), report.stop_offsets[p]) - start
            for p, start in report.from_offsets.items()
        )

    def _check_done(self, report: Report) -> None:
        store = KafkaPositions(self.settings.kafka.client_config(), group_id(self.group, self.spec.name))
        try:
            got = {int(k.rpartition(":")[2]): p.next_offset for k, p in store.load([self.topic]).items()}
        finally:
            store.close()
        short = {p: (got.get(p), stop) for p, stop in report.stop_offsets.items() if got.get(p, -1) < stop}
        if short:
            raise RuntimeError(f"the replay stopped short of the live positions (got, stop): {short}")

    def _clean_up(self) -> None:
        client = self.settings.redis.client()
        with contextlib.suppress(Exception):
            client.delete(lock_key(self.group), fence_key(self.group))
        with contextlib.suppress(Exception):  # best effort: groups without members expire anyway
            delete_groups(self.settings.kafka.client_config(), self.group)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline replay", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sink", required=True, help="a sink's name: bigquery, bigquery_content, http_<endpoint>")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-timestamp", help="ISO 8601 with a zone, e.g. 2026-12-06T10:00:00Z")
    start.add_argument("--from-offset", help="N for every partition, or PARTITION:N,PARTITION:N")
    parser.add_argument("--dry-run", action="store_true", help="print the range and send nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        replay = Replay(Settings(), args.sink)
        if args.from_timestamp:
            report = replay.plan(at_ms=timestamp_ms(args.from_timestamp))
        else:
            report = replay.plan(offsets=offsets_arg(args.from_offset))
    except ReplayRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    if not args.dry_run:
        report = replay.run(report, progress=False if args.json else None)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        ranges = ", ".join(
            f"{p}: {report.from_offsets[p]}-{report.stop_offsets[p]}" for p in sorted(report.from_offsets)
        )
        verb = "would re-send" if args.dry_run else f"re-sent in {report.took_s:g} s"
        print(
            f"{report.sink}: {verb} {report.records} records of {report.topic} (partition: from-stop) {ranges or '-'}"
        )
    return 0
