"""The redis-older-copy faults of ``make faults``: Redis put back to a consistent copy taken
``age_s`` earlier, under load (docs/delivery.md, "A Redis that comes back older")."""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime
from pathlib import Path

from infra.settings import Settings
from infra.stack.local import LocalStack
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import next_offsets

RECOVER_TIMEOUT_S = 180.0
# The pipeline's log lines that say who noticed a Redis that came back older, and the restart.
_NOTICED = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (?:(sinks\.flush): PositionsRewound|"
    rb"(pipeline\.instance_lock): the instance lock \S+ is gone|"
    rb"(pipeline\.supervisor): (?:job stopped because|took the))",
    re.MULTILINE,
)


def put_back_as_aof(rdb: Path, root: Path) -> None:
    """Make ``rdb`` the whole data of the Redis in ``root``: with ``appendonly yes``, Redis 7 loads its
    AOF folder and ignores a dump.rdb, so the snapshot becomes the AOF's base file."""
    aof = root / "appendonlydir"
    shutil.rmtree(aof, ignore_errors=True)
    aof.mkdir()
    shutil.copyfile(rdb, aof / "appendonly.aof.1.base.rdb")
    (aof / "appendonly.aof.1.incr.aof").touch()
    (aof / "appendonly.aof.manifest").write_text(
        "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\n"
    )
    (root / "dump.rdb").unlink(missing_ok=True)


def noticed(log: bytes, since: float) -> list[tuple[float, str]]:
    """``(seconds after since, who)`` for the sinks', the lock's and the supervisor's lines in ``log``."""
    found = []
    for match in _NOTICED.finditer(log):
        at = datetime.strptime(match.group(1).decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        who = next(g for g in match.groups()[1:] if g).decode().split(".")[-1]
        found.append((at - since, {"flush": "sinks", "instance_lock": "lock"}.get(who, who)))
    return found


def older_copy(stack: LocalStack, settings: Settings, pipeline_log: Path, notes: list[str], age_s: float) -> None:
    """Redis comes back ``age_s`` older, as after a failover to a replica that lagged or a restore from
    a snapshot: a consistent copy (BGSAVE: a fork's point-in-time view, unlike copying the AOF files
    while Redis appends to them), Redis stopped ``age_s`` later, the copy put back, Redis started.
    Older than the instance lock's TTL (10 s), the copy has lost the lock too; younger, it still
    holds it and only the sinks can notice. Notes the figures: the records the copy lacks, who
    noticed when, when the job was restarted, and when the positions were back where they were."""
    redis_server, sink, topic = stack.redis, RedisLeaderboardSink.name, settings.cdc.engagement_topic
    client = settings.redis.client()
    saved = client.lastsave()
    client.bgsave()
    while client.lastsave() == saved or client.info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.05)
    copy = redis_server.root.parent / "redis-older-copy.rdb"
    shutil.copyfile(Path(client.config_get("dir")["dir"]) / client.config_get("dbfilename")["dbfilename"], copy)
    time.sleep(age_s)
    before = next_offsets(client, sink, topic)
    client.close()
    redis_server.process.stop(settings.stack.stop_timeout_s)
    put_back_as_aof(copy, redis_server.root)

    log_at = pipeline_log.stat().st_size
    redis_server.process.start(settings.stack.start_timeout_s)
    restarted, wall = time.monotonic(), time.time()
    client = settings.redis.client()
    restored = next_offsets(client, sink, topic)
    lost = sum(end - restored.get(p, 0) for p, end in before.items())
    notes.append(f"the copy lacks {lost:,} of {sink}'s records (applied again)")
    recovered = None
    while time.monotonic() - restarted < RECOVER_TIMEOUT_S and recovered is None:
        now = next_offsets(client, sink, topic)
        if all(now.get(p, 0) >= end for p, end in before.items()):
            recovered = time.monotonic() - restarted
        time.sleep(0.2)
    with pipeline_log.open("rb") as text:
        text.seek(log_at)
        lines = noticed(text.read(), wall)
    first: dict[str, float] = {}
    for at, who in lines:
        first.setdefault(who, at)
    notes.append(
        "after Redis's restart: "
        + (", ".join(f"{who} {at:.1f} s" for who, at in first.items()) or "nobody noticed")
        + (f"; positions back past the pre-stop ones at {recovered:.1f} s" if recovered else "; not recovered")
    )
