"""Before and after in one run: a benchmark of ``loadtest.bench_pipeline`` (or ``--module``) on an
older commit and on the working tree, alternately, on the same stack, then the medians and their ratio.

    python -m loadtest.compare_commits --base 96599ca --rounds 2 -- drain --events 300000
    python -m loadtest.compare_commits --base 96599ca --rounds 2 -- latency --rate 3333 --duration 60
    python -m loadtest.compare_commits --base 96599ca --module loadtest.bench_http -- latency --duration 60
    python -m loadtest.compare_commits --base 96599ca --module loadtest.bench_bigquery --restart-emulator \
        -- latency --rate 3333 --duration 45 --modes storage_write

The older commit is checked out in a git worktree (``.bench/worktrees/<commit>``, kept for the next
run) and runs with this checkout's venv, stack folder, Prism binary and emulator venv, so only the
code differs; with ``--restart-emulator`` the stack's BigQuery emulator is restarted from each
round's tree before the round, so a change to its launcher is compared too.
Rounds alternate (after, before, after, before, ...) so that a machine that gets busier or quieter
during the run weighs on both alike. The stack must be up (``make up``); run it on a quiet machine.
Before each round the Redis sinks' stored positions are rewritten as bare offsets, which every
commit reads (``portable_positions``). Each round's full output goes to ``.bench/compare/``; the
figures are read from the lines ``PIPELINE DRAIN: ... at N events/s``, ``on the topic -> on
the board (the pipeline): p50 ...``, the CPU of the job, Prism and the emulator, the job's peak RSS, the peak lag
of the sinks with Kafka positions (``latency --sinks``), ``bench_http``'s ``COMMIT -> RECEIVED`` and
``bench_bigquery``'s ``COMMIT -> VISIBLE IN BIGQUERY``; of a benchmark with several phases, the last's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from infra.settings import REPO_ROOT, Settings

WORKTREES = REPO_ROOT / ".bench" / "worktrees"
OUTPUT = REPO_ROOT / ".bench" / "compare"
_DRAIN = re.compile(r"PIPELINE DRAIN: [\d,]+ envelopes at ([\d,]+) events/s")
_PIPELINE = re.compile(r"on the board \(the pipeline\): p50 (\d+) ms, p95 (\d+) ms, p99 (\d+) ms")
_END_TO_END = re.compile(
    r"COMMIT -> LEADERBOARD at [\d,]+ events/s for \S+ s: p50 (\d+) ms, p95 (\d+) ms, p99 (\d+) ms"
)
_RECEIVED = re.compile(r"COMMIT -> RECEIVED at [\d,]+ events/s: p50 (\d+) ms, p90 (\d+) ms, p99 (\d+) ms")
_VISIBLE = re.compile(
    r"COMMIT -> VISIBLE IN BIGQUERY \(\w+\) at [\d,]+ events/s: p50 (\d+) ms, p95 (\d+) ms, p99 (\d+) ms"
)
_LATENCIES = (
    (_PIPELINE, "topic->board", (50, 95, 99)),
    (_END_TO_END, "commit->board", (50, 95, 99)),
    (_VISIBLE, "commit->visible", (50, 95, 99)),
    (_RECEIVED, "commit->received", (50, 90, 99)),
)
_CORES = re.compile(r"^ +(job|prism|bigquery) +cpu +([\d.]+) cores", re.MULTILINE)
_JOB_RSS = re.compile(r"^ +job +cpu +[\d.]+ cores +peak rss +(\d+) MiB", re.MULTILINE)
_PEAK_LAG = re.compile(r"peak lag: (.*)$", re.MULTILINE)
_SINK_LAG = re.compile(r"(\w+) ([\d,]+) records")


def worktree(commit: str) -> Path:
    sha = subprocess.run(
        ["git", "rev-parse", "--short=12", commit], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = WORKTREES / sha
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO_ROOT, check=True)
    # What an older commit finds under its own root rather than through settings: the emulator's
    # venv and the binaries, this checkout's.
    (path / ".stack" / "logs").mkdir(parents=True, exist_ok=True)
    for shared in ("bqemu-venv", "bin", "lib"):
        link, target = path / ".stack" / shared, REPO_ROOT / ".stack" / shared
        if target.exists() and not link.exists():
            link.symlink_to(target)
    return path


def figures(output: str) -> dict[str, float]:
    """What one round printed, by name."""
    found: dict[str, float] = {}
    if match := _DRAIN.search(output):
        found["drain events/s"] = float(match.group(1).replace(",", ""))
    for pattern, name, quantiles in _LATENCIES:
        if matches := pattern.findall(output):  # the last phase's, for benchmarks with several
            found.update(zip((f"{name} p{q} ms" for q in quantiles), map(float, matches[-1]), strict=True))
    for process, cores in _CORES.findall(output):
        found[f"{process} cores"] = float(cores)  # the last phase's, for benchmarks with several
    if rss := _JOB_RSS.findall(output):
        found["job peak rss MiB"] = float(rss[-1])
    if match := _PEAK_LAG.search(output):
        for sink, records in _SINK_LAG.findall(match.group(1)):
            found[f"{sink} peak lag records"] = float(records.replace(",", ""))
    return found


def _figure(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.2f}"  # cores are fractions


def portable_positions(settings: Settings) -> int:
    """Store every Redis sink's positions as bare next offsets, the one encoding every commit reads
    (newer ones add a sequence mark an older commit cannot parse); returns the fields rewritten. A
    benchmark loses nothing by it: only the re-send check of the next record starts afresh."""
    client = settings.redis.client()
    rewritten = 0
    for key in client.scan_iter(match="*positions*", count=1000):
        if client.type(key) != b"hash":
            continue
        fields = {f: v.split(b";", 1)[0] for f, v in client.hgetall(key).items() if b";" in v}
        if fields:
            client.hset(key, mapping=fields)
            rewritten += len(fields)
    return rewritten


# Run in a round's tree: the stack's emulator stopped and started from that tree's launcher.
_RESTART_EMULATOR = """
from infra.settings import Settings
from infra.stack.local import LocalStack
emulator = LocalStack(Settings()).bigquery.process
emulator.stop(30)
raise SystemExit(0 if emulator.start(120) else 1)
"""


def run_round(
    tree: Path,
    label: str,
    round_no: int,
    bench_args: list[str],
    settings: Settings,
    bench: str,
    *,
    restart_emulator: bool = False,
) -> dict[str, float]:
    env_extra = {
        "STACK_DIR": str(settings.stack.dir),
        "PIPELINE_PRISM_BINARY": str(settings.pipeline.prism_binary),
    }
    if restart_emulator:
        env = {**os.environ, **env_extra}
        subprocess.run([sys.executable, "-c", _RESTART_EMULATOR], cwd=tree, env=env, check=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    log = OUTPUT / f"{bench_args[0] if bench_args else 'bench'}-{label}-{round_no}.log"
    print(f"== round {round_no}, {label} ({tree}); {portable_positions(settings)} positions made portable", flush=True)
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", bench, *bench_args],
        cwd=tree,
        env={**os.environ, **env_extra},
        capture_output=True,
        text=True,
        check=False,
    )
    log.write_text(result.stdout + result.stderr)
    found = figures(result.stdout)
    print(f"   {time.monotonic() - began:.0f} s, exit {result.returncode}: {found or 'no figures'} ({log})", flush=True)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.compare_commits", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--base", required=True, help="the older commit (before)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each (default 2)")
    parser.add_argument("--module", default="loadtest.bench_pipeline", help="the benchmark module to run")
    parser.add_argument(
        "--restart-emulator",
        action="store_true",
        help="before each round, restart the stack's BigQuery emulator from that round's tree (its launcher)",
    )
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="after --: the bench_pipeline arguments")
    args = parser.parse_args(argv)
    bench_args = [a for a in args.bench if a != "--"]
    settings = Settings()
    trees = {"after": REPO_ROOT, "before": worktree(args.base)}
    results: dict[str, list[dict[str, float]]] = {"after": [], "before": []}
    for round_no in range(1, args.rounds + 1):
        for label in ("after", "before"):
            found = run_round(
                trees[label], label, round_no, bench_args, settings, args.module, restart_emulator=args.restart_emulator
            )
            results[label].append(found)
    names = sorted({name for rounds in results.values() for found in rounds for name in found})
    print(
        f"\n{args.module} {' '.join(bench_args)}, {args.rounds} rounds each;"
        f" before = {args.base}, after = the working tree"
    )
    for line in median_table(results, names, ("before", "after"), fmt=_figure):
        print(line)
    return 0


def median_table(
    results: dict[str, list[dict[str, float]]],
    names: list[str],
    labels: tuple[str, str],
    fmt: Callable[[float], str] = lambda x: f"{x:,.0f}",
    ratio_digits: int = 3,
) -> list[str]:
    """A Markdown table of each figure per round under ``labels`` (base, new), their medians and the
    ratio new/base; a figure missing from either side is left out."""
    base, new = labels
    lines = [
        f"| figure | {base}, per round | {new}, per round | median {base} | median {new} | {new}/{base} |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        b_rounds = [r[name] for r in results[base] if name in r]
        n_rounds = [r[name] for r in results[new] if name in r]
        if not b_rounds or not n_rounds:
            continue
        b, n = statistics.median(b_rounds), statistics.median(n_rounds)
        ratio = f"{n / b:.{ratio_digits}f}" if b else "-"
        per = ", ".join(fmt(x) for x in b_rounds), ", ".join(fmt(x) for x in n_rounds)
        lines.append(f"| {name} | {per[0]} | {per[1]} | {fmt(b)} | {fmt(n)} | {ratio} |")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
