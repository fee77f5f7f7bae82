"""Rebuild the Redis leaderboards from the Kafka topics into fresh keys, and swap them in atomically.

    python -m pipeline rebuild-redis [--max-pause-s 20] [--catch-up-lag 2000] [--timeout-s 3600] [--json]
    make rebuild-redis

What it does, while the streaming pipeline may go on writing the live keys:

1. **Copy.** Starts a second ``python -m pipeline`` with the Redis lanes only (the same transforms and
   sinks: ``pipeline.job``), its own consumer group (so its own instance lock and fence), its own
   Prism port, and ``REDIS_KEY_PREFIX=<live prefix>rebuild:<id>:``. Its sinks have no positions
   there, so every lane reads its topic from the earliest retained offset.
2. **Catch up.** Waits until the copy is within ``--catch-up-lag`` records of the live sinks'
   positions (of the topics' ends when no pipeline holds the live lock).
3. **Pause.** Sets the live prefix's pause key with a TTL of ``--max-pause-s``: the live Redis sinks'
   scripts then refuse every write as retryable (``sinks.redis_store``), so the live positions
   stop moving. It reads them, and waits until the copy has reached every one of them. If that takes
   longer than the pause allows, it ends the pause and goes back to 2 (three times at most).
4. **Swap.** Pauses the copy too (its writers stop: its keys are complete and quiet), then
   ``sinks.redis_swap.swap``: one Lua script checks that no copied position is behind a live one,
   deletes the live keys the copy lacks, renames every copied key, positions and parked ids
   included, over its live name, and deletes the live pause. The live sinks' next write finds the
   positions it expected (the copy stopped exactly there) or, where the copy went further, a
   ``PositionConflict``: they reload the positions and skip what the copy applied as replays.
5. **Clean up.** Stops the copy's pipeline and deletes what is left under its prefix, its lock and
   fence keys and its Kafka consumer groups, whatever happened before.

docs/operations.md ("Rebuild the Redis leaderboards") gives the guarantees, the limits and measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis
from tqdm import tqdm

from infra.process import parent_death_signal, stop_group, tail
from infra.settings import REPO_ROOT, Settings
from pipeline.sources.offset_lookup import OffsetLookup
from sinks import redis_swap
from sinks.fencing import fence_key, lock_key
from sinks.kafka_positions import delete_groups
from sinks.positions import decode
from sinks.redis_keys import REDIS_SINKS, RedisKeys

_log = logging.getLogger("pipeline.rebuild")
POLL_S = 0.02
# Positions per sink: {"topic:partition": next offset}.
Offsets = dict[str, dict[str, int]]


class RebuildFailed(RuntimeError):  # noqa: N818 - a state, like the sinks' exceptions
    pass


@dataclass
class Report:
    run_id: str
    prefix: str
    live_running: bool
    copied: dict[str, int] = field(default_factory=dict)  # records per sink the copy covered
    catch_up_s: float = 0.0
    pause_ms: float = 0.0  # the live sinks' pause: from the pause key set to the swap's reply
    swap_ms: float = 0.0
    renamed: int = 0
    deleted: int = 0
    pauses: int = 0
    total_s: float = 0.0


def stored(client: redis.Redis, keys: RedisKeys) -> Offsets:
    """The next offsets each Redis sink has stored under ``keys``."""
    return {
        sink: {k.decode(): decode(v).next_offset for k, v in client.hgetall(keys.positions(sink)).items()}
        for sink in REDIS_SINKS
    }


def behind(copy: Offsets, target: Offsets) -> int:
    """Records the copy still has to handle to reach ``target`` (pure)."""
    return sum(
        max(0, offset - copy.get(sink, {}).get(key, 0))
        for sink, fields in target.items()
        for key, offset in fields.items()
    )


def sink_topics(settings: Settings) -> dict[str, list[str]]:
    cdc = settings.cdc
    return {"redis_leaderboard": [cdc.engagement_topic, cdc.parked_topic], "redis_content": [cdc.content_topic]}


def topic_ends(lookup: OffsetLookup, settings: Settings) -> Offsets:
    return {
        sink: {f"{topic}:{p}": end for topic in topics for p, end in lookup.ends(topic).items()}
        for sink, topics in sink_topics(settings).items()
    }


def copied(first_lag: int, first_targets: int, lag: int, targets: int) -> tuple[int, int]:
    """``(done, total)`` of the copy for its progress bar: the work is the lag it started with plus
    what the targets moved on since; done is that less the lag now (pure)."""
    total = first_lag + max(0, targets - first_targets)
    return max(0, total - lag), total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_environment(settings: Settings, prefix: str, group: str) -> dict[str, str]:
    """The copy's pipeline: the Redis lanes only, under ``prefix``, as consumer group ``group``."""
    return {
        **os.environ,
        "REDIS_KEY_PREFIX": prefix,
        "PIPELINE_SINKS": "redis",
        "PIPELINE_CONSUMER_GROUP": group,
        "PIPELINE_PRISM_PORT": str(free_port()),
        "METRICS_PORT": "0",
    }


class Rebuild:
    def __init__(
        self,
        settings: Settings,
        *,
        max_pause_s: float = 20.0,
        catch_up_lag: int = 2_000,
        timeout_s: float = 3_600.0,
        run_id: str | None = None,
        say: Callable[[str], None] = print,
        progress: bool | None = None,
    ) -> None:
        self.settings = settings
        self.max_pause_s = max_pause_s
        self.catch_up_lag = catch_up_lag
        self.timeout_s = timeout_s
        self.run_id = run_id or time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
        self.live = RedisKeys(settings.redis.key_prefix)
        self.copy = RedisKeys(f"{self.live.prefix}rebuild:{self.run_id}:")
        self.group = f"{settings.pipeline.consumer_group}.rebuild-{self.run_id}"
        self.client = settings.redis.client()
        self.say = say
        self.progress = progress  # the catch-up's bar on stderr; None: when it is a terminal
        self.log_path = settings.stack.dir / "logs" / f"rebuild-{self.run_id}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def run(self) -> Report:
        began = time.monotonic()
        deadline = began + self.timeout_s
        live_running = bool(self.client.exists(lock_key(self.settings.pipeline.consumer_group)))
        report = Report(self.run_id, self.copy.prefix, live_running)
        lookup = OffsetLookup(self.settings.kafka.client_config())
        try:
            self._start_copy()
            for attempt in range(1, 4):
                self._catch_up(lookup, live_running, deadline)
                report.catch_up_s = round(time.monotonic() - began, 1)
                if self._pause_and_swap(lookup, live_running, report):
                    break
                self.say(f"the copy did not reach the live positions within {self.max_pause_s:g} s (try {attempt})")
            else:
                raise RebuildFailed("the copy never reached the live positions within one pause; nothing was swapped")
        finally:
            lookup.close()
            self._clean_up()
        report.total_s = round(time.monotonic() - began, 1)
        return report

    def _start_copy(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.say(f"copy: python -m pipeline under {self.copy.prefix!r}, group {self.group}, log {self.log_path}")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline"],
                cwd=REPO_ROOT,
                env=copy_environment(self.settings, self.copy.prefix, self.group),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # A rebuild killed with kill -9 must not leave its copy running: the copy's
                # supervisor dies with it, and its Prism and job die with the supervisor.
                preexec_fn=parent_death_signal(),
            )

    def _check_copy(self, deadline: float) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RebuildFailed(f"the copy's pipeline exited with {self._proc.returncode}:\n{tail(self.log_path, 30)}")
        if time.monotonic() > deadline:
            raise RebuildFailed(f"the copy did not catch up within {self.timeout_s:g} s")

    def _targets(self, lookup: OffsetLookup, live_running: bool) -> Offsets:
        return stored(self.client, self.live) if live_running else topic_ends(lookup, self.settings)

    def _catch_up(self, lookup: OffsetLookup, live_running: bool, deadline: float) -> None:
        last_said = 0.0
        previous, still_since = -1, time.monotonic()
        first: tuple[int, int] | None = None
        disable = None if self.progress is None else not self.progress
        with tqdm(desc="copy", unit="record", disable=disable, file=sys.stderr) as bar:
            while True:
                self._check_copy(deadline)
                targets = self._targets(lookup, live_running)
                lag = behind(stored(self.client, self.copy), targets)
                target_sum = sum(offset for fields in targets.values() for offset in fields.values())
                first = first or (lag, target_sum)
                bar.n, bar.total = copied(*first, lag, target_sum)
                bar.refresh()
                now = time.monotonic()
                if lag != previous:
                    previous, still_since = lag, now
                # With no live pipeline the target is the topics' ends; a copy that stops short of
                # them (nothing left it can read) is as far as it gets, and the swap is still exact.
                if lag <= self.catch_up_lag and (live_running or lag == 0 or now - still_since > 5):
                    break
                if bar.disable and now - last_said > 5:
                    self.say(f"copy: {lag} records behind")
                    last_said = now
                time.sleep(0.5)
        self.say(f"copy caught up: {lag} records behind the {'live sinks' if live_running else 'topic ends'}")

    def _pause_and_swap(self, lookup: OffsetLookup, live_running: bool, report: Report) -> bool:
        held = redis_swap.pause(self.client, self.live, int(self.max_pause_s * 1000))
        paused = time.monotonic()
        report.pauses += 1
        try:
            target = stored(self.client, self.live)  # frozen now
            until = paused + self.max_pause_s * 0.8
            while behind(stored(self.client, self.copy), target) > 0:
                self._check_copy(float("inf"))
                if time.monotonic() > until:
                    return False
                time.sleep(POLL_S)
            # Quiet the copy: its writers apply nothing more, so the listing below is complete.
            redis_swap.pause(self.client, self.copy, 3_600_000)
            started = time.monotonic()
            done = redis_swap.swap(
                self.client, self.copy, self.live, self.settings.leaderboard.window_minutes, pause=held
            )
            ended = time.monotonic()
        finally:
            redis_swap.release(self.client, held)  # a no-op once the swap took it
        report.swap_ms = round((ended - started) * 1000, 1)
        report.pause_ms = round((ended - paused) * 1000, 1)
        report.renamed, report.deleted = done.renamed, done.deleted
        report.copied = {sink: sum(fields.values()) for sink, fields in stored(self.client, self.live).items()}
        self.say(
            f"swapped: {done.renamed} keys renamed, {done.deleted} stale live keys deleted; the live sinks were "
            f"paused {report.pause_ms:.0f} ms (the swap itself {report.swap_ms:.0f} ms)"
        )
        return True

    def _clean_up(self) -> None:
        if self._proc is not None:
            stop_group(self._proc, timeout=30)
        names = [raw for raw in self.client.scan_iter(match=self.copy.prefix + "*", count=1000)]
        for start in range(0, len(names), 1000):
            self.client.delete(*names[start : start + 1000])
        self.client.delete(lock_key(self.group), fence_key(self.group))
        with contextlib.suppress(Exception):  # best effort: an unused group expires on its own
            delete_groups(self.settings.kafka.client_config(), self.group)


def render(report: Report) -> str:
    copied = ", ".join(f"{sink} {n:,}" for sink, n in report.copied.items())
    return (
        f"rebuilt {report.prefix!r} -> live in {report.total_s:g} s (caught up after {report.catch_up_s:g} s); "
        f"positions covered: {copied}; live sinks paused {report.pause_ms:.0f} ms "
        f"({'pipeline running' if report.live_running else 'no pipeline running'}), swap {report.swap_ms:.0f} ms, "
        f"{report.renamed} keys renamed, {report.deleted} stale keys deleted"
    )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline rebuild-redis", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--max-pause-s", type=float, default=20.0, help="longest pause of the live Redis sinks")
    parser.add_argument("--catch-up-lag", type=int, default=2_000, help="records behind the live sinks to pause at")
    parser.add_argument(
        "--timeout-s", type=float, default=3_600.0, help="give up if the copy has not caught up by then"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or Settings()
    rebuild = Rebuild(
        settings,
        max_pause_s=args.max_pause_s,
        catch_up_lag=args.catch_up_lag,
        timeout_s=args.timeout_s,
        progress=False if args.json else None,
        # With --json, stdout is the report alone; what it says on the way goes to stderr.
        say=(lambda message: print(message, file=sys.stderr, flush=True)) if args.json else print,
    )
    try:
        report = rebuild.run()
    except (RebuildFailed, redis_swap.PauseHeld, redis_swap.PositionsBehind) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report)) if args.json else render(report))
    return 0
