"""Where the pipeline's worker spends its time during a drain: py-spy samples and a flame graph.

    python -m loadtest.profile_drain                      # docs/img/drain-profile.svg and a summary
    python -m loadtest.profile_drain --seconds 20 --svg /tmp/profile.svg

A bounded run of the pipeline with the Redis lanes from offset 0 (``loadtest.bench_pipeline``'s
drain, which it shares), with py-spy attached to the worker process (``pipeline.worker``) once the
first position is stored, for ``--seconds``. Two samplers run side by side, non-blocking, so the
job is not paused: one writes the flame graph of CPU (threads apart), one raw stacks of running
threads, one raw stacks with idle frames included, because waiting is where a streaming job loses
its time. The summary: per thread, the cores it used, its innermost functions on the CPU, and where
its time went, waits included (a wait charged to the frame that waits). Run on a quiet machine with
the stack up; ``--summarize`` prints the summary of the raw stacks taken earlier.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from infra.stack.local import LocalStack
from loadtest.bench_harness import SERIES_DIR, children, say, stack_sampler, stored
from loadtest.bench_pipeline import forget_positions, start_bounded_drain

RATE = 100  # samples per second and thread

# A frame of these modules is where a thread waits (a lock, a queue, a selector), not what waits.
_PLUMBING = re.compile(r"\((threading|queue|concurrent/futures/_base|selectors)\.py:")


def fold(raw: str) -> tuple[collections.Counter[str], dict[str, collections.Counter[str]]]:
    """py-spy's raw stacks (``thread (id): name;frame;...;frame count``, a frame being
    ``function (file:line)``): samples per thread, and per thread samples per innermost function,
    line numbers dropped, a wait in the plumbing charged to the frame that waits."""
    threads: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        inner = [f for f in frames[1:] if not _PLUMBING.search(f)] or frames[1:]
        leaf = re.sub(r":\d+\)$", ")", inner[-1]) if inner else "(no python frame)"
        threads[frames[0]] += int(count)
        leaves[frames[0]][leaf] += int(count)
    return threads, leaves


def summary(cpu: str, everything: str, seconds: float, rate: int, top: int) -> list[str]:
    """Per thread that used at least 2 % of a core, busiest first: the cores it used and where
    (``cpu``: samples of running threads), then where its time went, waits included
    (``everything``: idle samples too)."""
    busy, on_cpu = fold(cpu)
    _, anywhere = fold(everything)
    lines = []
    for thread, samples in busy.most_common():
        cores = samples / (seconds * rate)
        if cores < 0.02:
            continue
        lines.append(f"{thread}: {cores:.2f} cores")
        lines += [f"    cpu  {n / samples:6.1%}  {leaf}" for leaf, n in on_cpu[thread].most_common(top)]
        total = sum(anywhere[thread].values()) or 1
        lines += [f"    time {n / total:6.1%}  {leaf}" for leaf, n in anywhere[thread].most_common(top // 2)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long to sample the worker")
    parser.add_argument("--svg", type=Path, default=REPO_ROOT / "docs" / "img" / "drain-profile.svg")
    parser.add_argument("--raw", type=Path, default=SERIES_DIR / "drain-profile", help="raw stacks: PATH.cpu, PATH.all")
    parser.add_argument("--top", type=int, default=12, help="functions listed per thread")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the job (repeatable)")
    parser.add_argument("--summarize", action="store_true", help="only print the summary of the raw stacks at --raw")
    args = parser.parse_args(argv)
    cpu, everything = args.raw.with_suffix(".cpu"), args.raw.with_suffix(".all")
    if args.summarize:
        print("\n".join(summary(cpu.read_text(), everything.read_text(), args.seconds, RATE, args.top)))
        return 0
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: make bootstrap installs the dev dependencies")
    settings = Settings()
    stack_sampler(LocalStack(settings))  # says so if the stack is not up
    client = settings.redis.client()
    forget_positions(client)
    topic = settings.cdc.engagement_topic
    proc = start_bounded_drain(dict(item.split("=", 1) for item in args.env), "profile-drain.log")
    try:
        while sum(stored(client, topic).values()) == 0:
            if proc.poll() is not None:
                raise SystemExit(f"the bounded run ended before storing a position (exit {proc.returncode})")
            time.sleep(0.05)
        job = children(proc.pid).get("job")
        if job is None:
            raise SystemExit("no pipeline.worker process under the supervisor")
        say(f"sampling the worker (pid {job}) for {args.seconds:.0f} s")
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        common = ["record", "-p", str(job), "-d", str(int(args.seconds)), "-r", str(RATE), "--threads", "--nonblocking"]
        outputs = (["-f", "flamegraph", "-o", str(args.svg)], ["-f", "raw", "-o", str(cpu)])
        samplers = [subprocess.Popen([spy, *common, *output], stdout=subprocess.DEVNULL) for output in outputs]
        samplers.append(
            subprocess.Popen([spy, *common, "--idle", "-f", "raw", "-o", str(everything)], stdout=subprocess.DEVNULL)
        )
        for sampler in samplers:
            sampler.wait()
    finally:
        stop_group(proc)  # the profile is taken; the rest of the drain is not needed
    say(f"flame graph (CPU): {args.svg}; raw stacks: {cpu}, {everything} (idle included)")
    for line in summary(cpu.read_text(), everything.read_text(), args.seconds, RATE, args.top):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
