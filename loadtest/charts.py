"""Charts of the sustained benchmark runs: ``python -m loadtest.charts`` (``make bench-charts``).

``bench_pipeline``'s latency runs write their time series to ``.bench/<name>.json``: every probe
(seconds into the run, commit -> on the board in ms) and, once a second, the records the Redis sink
had applied and the records on the engagement topic. This draws, into ``docs/img/``:

- ``<name>-timeline.png`` per run: events/s into the topic and applied by the sink, and each probe's
  latency, over the run;
- ``latency-cdf.png``: the latency CDF of every run, on a log axis (the tail is what matters).

The data shaping is pure (``rates``, ``cdf``), the drawing is matplotlib with the Agg backend (no
display), so both are unit-tested on synthetic series.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import orjson
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from infra.settings import REPO_ROOT

SERIES_DIR = REPO_ROOT / ".bench"
OUT_DIR = REPO_ROOT / "docs" / "img"
DPI = 100
# Plain milliseconds on the log axes ("60", not "6 x 10^1").
_MS = FuncFormatter(lambda value, _: f"{value:,.0f}")


def rates(throughput: Sequence[Sequence[float]]) -> list[tuple[float, float, float]]:
    """``(t, applied/s, into the topic/s)`` between consecutive ``(t, applied, on topic)`` samples,
    at the middle of each interval."""
    result = []
    for (t0, a0, k0), (t1, a1, k1) in pairwise(throughput):
        dt = t1 - t0
        if dt > 0:
            result.append(((t0 + t1) / 2, (a1 - a0) / dt, (k1 - k0) / dt))
    return result


def cdf(latencies: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sorted latencies and the share of probes at or below each."""
    xs = sorted(latencies)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def timeline(run: dict[str, Any]) -> Figure:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    points = rates(run["throughput"])
    if points:
        t, applied, into = zip(*points, strict=True)
        top.plot(t, into, label="into the topic (Debezium)", color="#9ca3af")
        top.plot(t, applied, label="applied by the Redis sink", color="#2563eb")
    top.set_ylabel("events/s")
    top.legend(loc="lower right")
    top.set_title(f"{run['name']}: {run['rate']:,} events/s for {run['duration_s']:g} s")
    if run["probes"]:
        pt, ms = zip(*run["probes"], strict=True)
        bottom.scatter(pt, ms, s=4, color="#dc2626")
    bottom.set_yscale("log")
    bottom.yaxis.set_major_formatter(_MS)
    bottom.yaxis.set_minor_formatter(_MS)
    bottom.set_ylabel("commit -> board (ms)")
    bottom.set_xlabel("seconds into the run")
    for axis in (top, bottom):
        axis.grid(True, alpha=0.3)
    return fig


def latency_cdf(runs: Sequence[dict[str, Any]]) -> Figure:
    fig, axis = plt.subplots(figsize=(9, 5), constrained_layout=True)
    for run in runs:
        xs, ys = cdf([ms for _, ms in run["probes"]])
        if xs:
            axis.plot(xs, ys, label=f"{run['name']} ({len(xs):,} probes)")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(_MS)
    axis.xaxis.set_minor_formatter(_MS)
    axis.set_xlabel("commit -> visible in top_engagement:10min (ms)")
    axis.set_ylabel("share of probes")
    axis.axhline(0.99, color="#9ca3af", linestyle="--", linewidth=1)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title("Latency CDF (the dashed line is p99)")
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def draw(series_dir: Path, out_dir: Path) -> list[Path]:
    runs = [orjson.loads(p.read_bytes()) for p in sorted(series_dir.glob("*.json"))]
    written = [save(timeline(run), out_dir / f"{run['name']}-timeline.png") for run in runs]
    if runs:
        written.append(save(latency_cdf(runs), out_dir / "latency-cdf.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.charts", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--series", type=Path, default=SERIES_DIR, help="where the runs' JSON files are")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the PNG files go")
    args = parser.parse_args(argv)
    written = draw(args.series, args.out)
    if not written:
        print(f"no time series in {args.series}: run `make bench-pipeline` first", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
