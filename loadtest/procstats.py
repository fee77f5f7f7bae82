"""CPU and peak memory of the stack's processes over a benchmark run, read from /proc."""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def describe(latencies: list[float], unit: str = "rows") -> str:
    """p50/p95/p99/max of latencies in milliseconds, as the benchmarks print them."""
    if not latencies:
        return "no samples"
    return (
        f"p50 {percentile(latencies, 50):.0f} ms, p95 {percentile(latencies, 95):.0f} ms, "
        f"p99 {percentile(latencies, 99):.0f} ms, max {max(latencies):.0f} ms over {len(latencies):,} {unit}"
    )


def machine() -> str:
    cores = os.cpu_count()
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.node()}: {cores} cores, {mem_kib / 1024 / 1024:.1f} GiB, load average {load} (before the run)"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: include reaped children (Postgres backends come and go).
    return sum(int(x) for x in fields[11:15]) / CLOCK_TICKS


def children_map() -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` from one walk over /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """The process and its descendants (Postgres forks a backend per connection)."""
    children = children_map() if children is None else children
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(children.get(current, []))
    return out


def _rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@dataclass
class ProcessSampler:
    """Call ``sample()`` now and then during a run; ``report()`` gives CPU cores used and peak RSS."""

    pids: dict[str, int]
    started: float = field(default_factory=time.monotonic)
    cpu_start: dict[str, float] = field(default_factory=dict)
    # Last CPU reading per process, so one that exits before report() still counts.
    cpu_last: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float] = field(default_factory=dict)
    last_sample: float = 0.0

    def __post_init__(self) -> None:
        for name, pid in list(self.pids.items()):
            self.add(name, pid)

    def add(self, name: str, pid: int) -> None:
        """Follow one more process from now on (CPU is counted from this call)."""
        self.pids[name] = pid
        self.cpu_start[name] = self.cpu_last[name] = self._cpu(_tree(pid))
        self.peak_rss[name] = 0.0

    def _cpu(self, pids: list[int]) -> float:
        total = 0.0
        for p in pids:
            try:
                total += _cpu_seconds(p)
            except OSError:
                continue
        return total

    def sample(self, *, force: bool = False) -> None:
        """Read CPU and RSS, at most twice a second (walking /proc is not free)."""
        now = time.monotonic()
        if not force and now - self.last_sample < 0.5:
            return
        self.last_sample = now
        children = children_map()  # one walk over /proc per sample, shared by every process
        for name, pid in self.pids.items():
            if Path(f"/proc/{pid}").exists():
                tree = _tree(pid, children)
                self.cpu_last[name] = max(self.cpu_last[name], self._cpu(tree))
                self.peak_rss[name] = max(self.peak_rss[name], _rss_mib(tree))

    def sample_in_background(self, interval: float = 0.5) -> None:
        """Keep sampling from a thread, so processes that exit before ``report()`` still count."""

        def loop() -> None:
            while True:
                self.sample(force=True)
                time.sleep(interval)

        threading.Thread(target=loop, name="process-sampler", daemon=True).start()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each process used since it was added, as of the last sample."""
        return {name: self.cpu_last[name] - self.cpu_start[name] for name in self.pids}

    def report(self) -> list[str]:
        elapsed = time.monotonic() - self.started
        lines = []
        self.sample(force=True)
        for name in self.pids:
            cores = (self.cpu_last[name] - self.cpu_start[name]) / elapsed if elapsed > 0 else 0.0
            lines.append(f"  {name:<10} cpu {cores:5.2f} cores   peak rss {self.peak_rss[name]:7.0f} MiB")
        return lines
