"""The hostile-endpoint fault of ``make faults`` (issue 24): the local receiver answers every request
with a 200 that records nothing, changing its reply every ``PHASE_S``: a proxy's HTML page, JSON
nested 5,000 levels deep, a 256 MB body, then a small ack one byte every 0.25 s; then it is healthy.

The pipeline must believe none of them, never fail (the supervisor's restarts are counted by the
suite), keep its memory bounded, and dead-letter nothing: each phase is shorter than the retry
budget, and the slow one opens the breaker, which pauses the lane. Afterwards the receiver must
equal Postgres (the suite's HTTP check) without a replay.
"""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.http_receiver.client import ReceiverClient
from infra.settings import Settings
from loadtest.procstats import _rss_mib, _tree

PHASES = ("html", "deep", "huge", "slow")
PHASE_S = 6.0


def problems(settings: Settings) -> dict[str, int]:
    """engagement_http_reply_problems_total by problem, summed over endpoints; {} if not served."""
    try:
        text = httpx.get(settings.metrics.url, timeout=5).text
    except httpx.HTTPError:
        return {}
    found: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "engagement_http_reply_problems_total":
                problem = sample.labels["problem"]
                found[problem] = found.get(problem, 0) + int(sample.value)
    return found


def inject(settings: Settings, pipeline_pid: int, notes: list[str]) -> None:
    peak = 0.0
    with ReceiverClient(settings.http_receiver.control_url) as receiver:
        try:
            for mode in PHASES:
                receiver.set_faults(hostile=mode)
                ends = time.monotonic() + PHASE_S
                while time.monotonic() < ends:
                    peak = max(peak, _rss_mib(_tree(pipeline_pid)))
                    time.sleep(0.5)
        finally:
            receiver.clear_faults()
        replies = receiver.stats()["hostile_replies"]
    seen = ", ".join(f"{name} {count}" for name, count in sorted(problems(settings).items()) if count)
    notes.append(
        f"{replies} hostile replies ({', '.join(PHASES)}, {PHASE_S:g} s each); counted: {seen or 'none'}; "
        f"pipeline's processes peak RSS {peak:,.0f} MiB"
    )
