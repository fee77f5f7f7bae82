"""Where the pipeline's worker spends its time during a drain: py-spy samples and a flame graph.

    python -m loadtest.profile_drain                      # docs/img/drain-profile.svg and a summary
    python -m loadtest.profile_drain --seconds 20 --svg /tmp/profile.svg

A bounded run of the pipeline with the Redis lanes from offset 0 (``loadtest.bench_pipeline``'s
drain, which it shares), with py-spy attached to the worker process (``pipeline.worker``) once the
first position is stored, for ``--seconds``. Two samplers run side by side, non-blocking, so the
job is not paused: one writes the flame graph (every thread, idle frames included, because waiting
is where a streaming job loses its time), the other raw stacks from which the summary is printed:
the share of samples per thread, and per thread the frames with the most samples of their own
(the innermost frame), grouped by function. Run on a quiet machine with the stack up.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from loadtest.bench_harness import children, say, stored
from loadtest.bench_pipeline import forget_positions, start_bounded_drain

# py-spy's raw format: "thread (0x..); frame; frame; ... count", a frame being "function (file:line)".
_THREAD = re.compile(r"^(?:process \d+:\"[^\"]*\";)?thread \((0x[0-9a-f]+)\)(?: \"([^\"]*)\")?;?")


def fold(raw: str) -> tuple[collections.Counter[str], dict[str, collections.Counter[str]]]:
    """Samples per thread, and per thread samples per innermost function (line numbers dropped)."""
    threads: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        leaf = re.sub(r":\d+\)$", ")", frames[-1]) if len(frames) > 1 else "(no python frame)"
        threads[thread] += int(count)
        leaves[thread][leaf] += int(count)
    return threads, leaves


def summary(raw: str, top: int) -> list[str]:
    threads, leaves = fold(raw)
    total = sum(threads.values()) or 1
    lines = []
    for thread, samples in threads.most_common():
        if samples / total < 0.01:
            continue
        lines.append(f"{thread}: {samples / total:.1%} of samples")
        for leaf, n in leaves[thread].most_common(top):
            lines.append(f"    {n / samples:6.1%}  {leaf}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long to sample the worker")
    parser.add_argument("--svg", type=Path, default=REPO_ROOT / "docs" / "img" / "drain-profile.svg")
    parser.add_argument("--top", type=int, default=12, help="functions listed per thread")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the job (repeatable)")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: make bootstrap installs the dev dependencies")
    settings = Settings()
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
        with tempfile.NamedTemporaryFile(suffix=".txt") as raw_file:
            common = ["record", "-p", str(job), "-d", str(int(args.seconds)), "--idle", "--threads", "--nonblocking"]
            samplers = [
                subprocess.Popen([spy, *common, "-f", "flamegraph", "-o", str(args.svg)], stdout=subprocess.DEVNULL),
                subprocess.Popen([spy, *common, "-f", "raw", "-o", raw_file.name], stdout=subprocess.DEVNULL),
            ]
            for sampler in samplers:
                sampler.wait()
            raw = Path(raw_file.name).read_text()
    finally:
        stop_group(proc)  # the profile is taken; the rest of the drain is not needed
    say(f"flame graph: {args.svg.relative_to(REPO_ROOT) if args.svg.is_relative_to(REPO_ROOT) else args.svg}")
    for line in summary(raw, args.top):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
