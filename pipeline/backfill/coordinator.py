"""The backfill from start to handover: check the sinks, take a snapshot, find the boundary, run the
job, store the boundary in the sinks (docs/operations.md, "Backfill from Postgres").

1. Under the pipeline's instance lock (no streaming job writes meanwhile; the job is fenced like
   the stream's), every target sink must have no positions for the stream topics: a backfill fills
   a new sink or a lost Redis, never one that already follows the stream. Nor for the backfill's
   own topics: those are left by a backfill whose snapshot is gone (its process died).
2. ``E0`` = the Debezium topics' end offsets; then the snapshot (``SnapshotSession``); then wait until
   Debezium has confirmed its LSN; ``E1`` = end offsets; the boundary of each partition
   (``pipeline.backfill.handover``). A race (a visible change after a non-visible one) drops the
   snapshot and takes a new one.
3. The job (``pipeline.backfill.job``) on Prism, in that snapshot; a failed run is run again in the
   same snapshot and resumes each split at the lowest position its sinks stored.
4. The handover: each sink stores the boundary for the stream topics (and the parking topic's end),
   through its own ``commit``. ``python -m pipeline`` then starts every partition exactly there.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from tqdm import tqdm

from infra.settings import Settings
from pipeline.backfill.envelopes import CONTENT, EVENTS, SnapshotInfo, Split, backfill_topic, id_splits
from pipeline.backfill.handover import low_offsets, scan_boundaries, store_positions
from pipeline.backfill.job import BackfillPlan, build
from pipeline.backfill.postgres import SnapshotSession, wait_for_slot
from pipeline.backfill.snapshot import Boundary, BoundaryRace, MarginTooSmall
from pipeline.runners import pipeline_options
from pipeline.sources.discovery import end_offsets
from sinks.contract import Sink
from sinks.fencing import Fence, guard
from sinks.positions import Position
from sinks.registry import SinkSpec, lanes

_log = logging.getLogger("pipeline.backfill")


class Refused(Exception):  # noqa: N818 - a state, reported to the user as it is
    """The backfill cannot run as asked; the message says why and what to do."""


@dataclass
class Report:
    rows: dict[str, int] = field(default_factory=dict)
    job_s: float = 0.0
    attempts: int = 0
    snapshots: int = 0
    boundaries: dict[str, Boundary] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return sum(self.rows.values()) / self.job_s if self.job_s else 0.0


PROGRESS_EVERY_S = 5.0


def say(message: str) -> None:
    print(message, flush=True)


def share_done(splits: Sequence[Split]) -> tuple[int, int]:
    """``(ids behind the stored positions, ids in all)`` over the splits: the job's progress (pure)."""
    return sum(s.resume - s.start for s in splits), sum(s.stop - s.start for s in splits)


class Backfill:
    def __init__(self, settings: Settings, sink_names: str) -> None:
        self.settings = settings
        chosen = lanes(sink_names, settings)
        self.event_sinks = tuple(spec for lane in chosen if lane.topic == "engagement" for spec in lane.sinks)
        self.content_sinks = tuple(spec for lane in chosen if lane.topic == "content" for spec in lane.sinks)
        cdc = settings.cdc
        self.stream_topics = {"engagement": cdc.engagement_topic, "content": cdc.content_topic}
        self.backfill_topics = {
            "engagement": backfill_topic(cdc.topic_prefix, EVENTS),
            "content": backfill_topic(cdc.topic_prefix, CONTENT),
        }

    # --- sinks -----------------------------------------------------------------------------------
    def _open(self, spec: SinkSpec) -> Sink[Any]:
        sink = guard(spec.build(self.settings), Fence.of(self.settings))
        sink.open()
        return sink

    def _specs(self) -> list[tuple[str, SinkSpec]]:
        return [("engagement", s) for s in self.event_sinks] + [("content", s) for s in self.content_sinks]

    def check_sinks(self) -> None:
        """Refuse sinks that follow the stream already, or hold an interrupted backfill."""
        problems = []
        for kind, spec in self._specs():
            sink = self._open(spec)
            try:
                topics = [self.stream_topics[kind]] + ([self.settings.cdc.parked_topic] if kind == "engagement" else [])
                if sink.positions(topics):
                    problems.append(
                        f"{spec.name} already has positions for {', '.join(topics)}: it follows the stream, and a "
                        "backfill would count what it holds twice. Backfill a new sink, or reset this one first "
                        "(Redis: rebuild the boards, or delete its keys and engagement:positions:*; "
                        f"BigQuery/HTTP: a new PIPELINE_CONSUMER_GROUP or dataset)."
                    )
                elif sink.positions([self.backfill_topics[kind]]):
                    problems.append(
                        f"{spec.name} holds part of an earlier backfill whose process ended before the handover; its "
                        "snapshot is gone, so it cannot be finished. Reset the sink (as above) and run the backfill "
                        "again."
                    )
            finally:
                sink.close()
        if problems:
            raise Refused("\n".join(f"- {p}" for p in problems))

    def resume_points(self, splits: Sequence[Split]) -> list[Split]:
        """Each split from the lowest next offset its sinks stored (a failed job run again); each
        sink is opened once."""
        kinds = {"engagement" if split.table == EVENTS else "content" for split in splits}
        stored: dict[tuple[str, str], dict[str, Position]] = {}
        for kind in sorted(kinds):
            for spec in self.event_sinks if kind == "engagement" else self.content_sinks:
                sink = self._open(spec)
                try:
                    stored[kind, spec.name] = sink.positions([self.backfill_topics[kind]])
                finally:
                    sink.close()
        out = []
        for split in splits:
            kind = "engagement" if split.table == EVENTS else "content"
            specs = self.event_sinks if kind == "engagement" else self.content_sinks
            key = f"{self.backfill_topics[kind]}:{split.partition}"
            found = [stored[kind, spec.name].get(key) for spec in specs]
            resume = split.start if any(p is None for p in found) else min(p.next_offset for p in found if p)
            out.append(Split(split.table, split.partition, split.start, split.stop, max(split.start, resume)))
        return out

    # --- Kafka -----------------------------------------------------------------------------------
    def ensure_backfill_topics(self, partitions: dict[str, int]) -> None:
        """Empty topics named like the backfill's positions: sinks that keep positions in Kafka
        (BigQuery, HTTP) can only commit offsets for a topic that exists, and Kafka tools then show
        the backfill's progress per split like any lag."""
        admin = AdminClient(self.settings.kafka.client_config())
        meta = admin.list_topics(timeout=10).topics
        for kind, count in partitions.items():
            topic = self.backfill_topics[kind]
            existing = meta.get(topic)
            if existing is None:
                kafka = self.settings.kafka
                # Replicated like every other topic (KAFKA_BROKERS): it holds no records, but the
                # offsets committed for it must not depend on one broker.
                futures = admin.create_topics(
                    [
                        NewTopic(
                            topic,
                            num_partitions=count,
                            replication_factor=kafka.replication_factor,
                            config={"min.insync.replicas": str(kafka.min_insync_replicas)},
                        )
                    ]
                )
            elif len(existing.partitions) < count:
                futures = admin.create_partitions([NewPartitions(topic, count)])
            else:
                continue
            for future in futures.values():
                future.result(timeout=30)

    # --- the steps -------------------------------------------------------------------------------
    def snapshot_and_boundary(self, report: Report) -> tuple[SnapshotSession, dict[str, Boundary]]:
        s, bf = self.settings, self.settings.backfill
        config = s.kafka.client_config()
        kinds = [k for k, specs in (("engagement", self.event_sinks), ("content", self.content_sinks)) if specs]
        for attempt in range(1, bf.max_snapshot_attempts + 1):
            report.snapshots = attempt
            before = {k: end_offsets(config, self.stream_topics[k]) for k in kinds}
            session = SnapshotSession(s.postgres.conninfo())
            try:
                say(
                    f"snapshot {session.snapshot_id}: {session.snapshot.xmin}:{session.snapshot.xmax} "
                    f"({len(session.snapshot.xip)} running), LSN {session.lsn_text}"
                )
                waited = wait_for_slot(s.postgres.conninfo(), s.cdc.slot_name, session.lsn_text, bf.slot_wait_timeout_s)
                say(f"Debezium confirmed the snapshot's LSN after {waited:.1f} s")
                boundaries: dict[str, Boundary] = {}
                for kind in kinds:
                    topic = self.stream_topics[kind]
                    after = end_offsets(config, topic)
                    boundaries.update(
                        scan_boundaries(
                            config,
                            topic,
                            before[kind],
                            after,
                            session.snapshot,
                            bf.scan_margin,
                            low_offsets(config, topic),
                        )
                    )
                return session, boundaries
            except (BoundaryRace, MarginTooSmall) as exc:
                session.close()
                say(f"boundary not exact with this snapshot ({exc}); taking a new one")
                time.sleep(0.2 * attempt)
            except BaseException:
                session.close()
                raise
        raise Refused(f"no exact boundary in {bf.max_snapshot_attempts} snapshots; try again when writes are quieter")

    def run_job(self, plan: BackfillPlan, report: Report) -> None:
        from apache_beam import Pipeline

        from pipeline.supervisor import prism_process, start_own_prism

        s = self.settings
        prism = prism_process(s)
        start_own_prism(prism)
        try:
            for attempt in range(1, s.backfill.job_attempts + 1):
                report.attempts = attempt
                splits = tuple(self.resume_points(plan.splits))
                current = BackfillPlan(**{**plan.__dict__, "splits": splits})
                options = pipeline_options("prism", job_endpoint=f"localhost:{s.pipeline.prism_port}", streaming=False)
                p = Pipeline(options=options)
                build(p, s, current)
                began = time.monotonic()
                state = self._wait(p.run(), current.splits)
                report.job_s += time.monotonic() - began
                if state in ("DONE", "PipelineState.DONE"):
                    return
                say(f"backfill job ended in state {state} (run {attempt}); running it again in the same snapshot")
            raise Refused(f"the backfill job failed {s.backfill.job_attempts} times; see the log above")
        finally:
            prism.stop(10)

    def _wait(self, result: Any, splits: Sequence[Split]) -> str:
        """The job's end state; meanwhile, on a terminal, a bar of the id ranges the sinks' stored
        positions cover, read every ``PROGRESS_EVERY_S`` (the read opens each sink: not more often).
        The wait runs in a daemon thread, so Ctrl-C still ends the command at once."""
        outcome: list[Any] = []

        def wait() -> None:
            try:
                outcome.append(result.wait_until_finish())
            except BaseException as exc:  # noqa: BLE001 - raised again below, in the command's thread
                outcome.append(exc)

        waiter = threading.Thread(target=wait, name="backfill-wait", daemon=True)
        waiter.start()
        done, total = share_done(splits)
        bar_format = "{desc}: {percentage:3.0f}% of the id ranges|{bar}| {elapsed}<{remaining}"
        bar = tqdm(total=total, initial=done, desc="backfill", bar_format=bar_format, disable=None, file=sys.stderr)
        with bar:
            while waiter.is_alive():
                waiter.join(None if bar.disable else PROGRESS_EVERY_S)
                if waiter.is_alive():
                    try:
                        now, _ = share_done(self.resume_points(splits))
                    except Exception as exc:  # noqa: BLE001 - a store's blip must not end a healthy job
                        _log.debug("backfill progress not read (%s); the bar waits", exc)
                        continue
                    bar.update(max(0, now - bar.n))
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return str(outcome[0])

    def handover(self, boundaries: dict[str, Boundary]) -> None:
        s = self.settings
        parked = {
            f"{s.cdc.parked_topic}:{p}": Position(end)
            for p, end in end_offsets(s.kafka.client_config(), s.cdc.parked_topic).items()
        }
        for kind, spec in self._specs():
            prefix = f"{self.stream_topics[kind]}:"
            positions = {k: b.position for k, b in boundaries.items() if k.startswith(prefix)}
            if kind == "engagement":
                positions.update(parked)
            sink = self._open(spec)
            try:
                store_positions(sink, positions)
            finally:
                sink.close()
            say(f"  {spec.name}: stream positions stored for {len(positions)} partitions")

    def run(self) -> Report:
        s, report = self.settings, Report()
        names = [spec.name for _, spec in self._specs()]
        say(f"backfill from Postgres into {', '.join(names)}")
        self.ensure_backfill_topics({"engagement": s.backfill.splits, "content": 1})
        self.check_sinks()
        session, boundaries = self.snapshot_and_boundary(report)
        report.boundaries = boundaries
        try:
            low, high = session.id_range()
            ranges = id_splits(low, high, s.backfill.splits)
            splits = [Split(EVENTS, i, start, stop, start) for i, (start, stop) in enumerate(ranges)]
            report.rows = {EVENTS: session.count(EVENTS), CONTENT: session.count(CONTENT)}
            splits.append(Split(CONTENT, 0, 0, report.rows[CONTENT], 0))
            say(
                f"reading {report.rows[EVENTS]:,} events in {len(ranges)} id ranges and {report.rows[CONTENT]:,} "
                "content rows"
            )
            info = SnapshotInfo(
                s.cdc.topic_prefix, s.postgres.db, session.lsn, session.snapshot.xmin & 0xFFFFFFFF, session.ts_ms
            )
            plan = BackfillPlan(
                s.postgres.conninfo(),
                session.snapshot_id,
                info,
                tuple(splits),
                self.event_sinks,
                self.content_sinks,
                s.backfill.fetch_rows,
            )
            self.run_job(plan, report)
        finally:
            session.close()
        say(f"backfill written in {report.job_s:.1f} s ({report.rows_per_s:,.0f} rows/s); handing over to the stream")
        self.handover(boundaries)
        for key, b in sorted(
            boundaries.items(), key=lambda kv: (kv[0].rsplit(":", 1)[0], int(kv[0].rsplit(":", 1)[1]))
        ):
            _log.info("%s: the stream starts at offset %d (%d scanned)", key, b.position.next_offset, b.scanned)
        return report
