"""The hostile-endpoint fault of ``make faults`` (issue 24): the local receiver answers requests
with a 200 that records nothing, changing its reply as soon as the sink has had one of each: a small
ack one byte every 0.25 s (the sink gives up at its request deadline, 15 s by default), a proxy's
HTML page, JSON nested 5,000 levels deep, a 256 MB body; then it is healthy.

The pipeline must believe none of them, never fail (the suite counts the supervisor's restarts),
keep its memory bounded, and dead-letter nothing: the whole takes less than the retry budget
(``HTTP_SINK_BUDGET_S``, 30 s); hostility that lasts longer dead-letters by design, for the replay.
Afterwards the receiver must equal Postgres (the suite's HTTP check) without a replay.
"""

from __future__ import annotations

import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.http_receiver.client import ReceiverClient
from infra.settings import Settings
from loadtest.procstats import _rss_mib, _tree

PHASES = ("slow", "html", "deep", "huge")


def cycle(receiver: ReceiverClient, modes: tuple[str, ...] = PHASES, each_s: float = 20.0) -> list[str]:
    """Set each hostile mode until the receiver has given that reply once (at most ``each_s``), then
    clear the faults; returns the modes that were served."""
    served = []
    try:
        for mode in modes:
            before = receiver.stats()["hostile_replies"]
            receiver.set_faults(hostile=mode)
            ends = time.monotonic() + each_s
            while time.monotonic() < ends:
                if receiver.stats()["hostile_replies"] > before:
                    served.append(mode)
                    break
                time.sleep(0.05)
    finally:
        receiver.clear_faults()
    return served


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
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], _rss_mib(_tree(pipeline_pid)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.monotonic()
    with ReceiverClient(settings.http_receiver.control_url) as receiver:
        try:
            served = cycle(receiver)
            took = time.monotonic() - began
            time.sleep(10)  # the slow reply's request, and a retry of the huge one, end in this
        finally:
            done.set()
        replies = receiver.stats()["hostile_replies"]
    seen = ", ".join(f"{name} {count}" for name, count in sorted(problems(settings).items()) if count)
    notes.append(
        f"{replies} hostile replies ({', '.join(served)}) in {took:.0f} s; counted: {seen or 'none'}; "
        f"pipeline's processes peak RSS {peak[0]:,.0f} MiB"
    )
