"""What lanes cost and what they buy: Redis latency while another sink is down for 60 s.

    make bench-lanes                                  # = the three phases below, about 6 minutes
    python -m loadtest.bench_lanes --rate 3333 --duration 120 --outage 60

Three streaming runs at ``--rate`` events/s, each measuring commit -> ``top_engagement:10min``
with probe rows (as ``bench_pipeline latency``):

1. ``PIPELINE_SINKS=redis``: the leaderboards alone (the baseline);
2. ``redis,faulty``: a second lane with the fault-injection sink (``sinks.fault_injection``),
   healthy: what an extra lane costs in CPU and latency;
3. ``redis,faulty`` with that sink down for ``--outage`` seconds from t = 20 s: the leaderboards'
   latency during the outage against phase 2, the job's memory while the other lane's backlog
   waits in Kafka, and how long the sink takes to catch up afterwards, with every record
   delivered exactly once to it (its ``faulty:deliveries`` counts).

Run on a quiet machine with the stack up (``make up``).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest.bench_harness import say, stack_sampler
from loadtest.bench_pipeline import latency_phase
from loadtest.probes import Prober
from loadtest.procstats import describe, machine
from sinks.fault_injection import DELIVERIES_KEY, MODE_KEY, start_at
from sinks.redis_store import next_offsets


def reset_faulty(settings: Settings) -> dict[int, int]:
    """The fault-injection sink starts at today's topic end, with nothing delivered yet."""
    ends = end_offsets(settings.kafka, settings.cdc.engagement_topic)
    start_at(settings.redis.client(), settings.cdc.engagement_topic, ends)
    return ends


def window(prober: Prober, start: float, end: float) -> list[float]:
    return [ms for t, ms in prober.timed if start <= t < end]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=int, default=3333)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--outage", type=float, default=60)
    parser.add_argument("--outage-start", type=float, default=20)
    args = parser.parse_args(argv)
    settings = Settings()
    stack = LocalStack(settings)
    client = settings.redis.client()
    topic = settings.cdc.engagement_topic
    say(machine())
    start, end = args.outage_start, args.outage_start + args.outage

    say(f"phase 1: PIPELINE_SINKS=redis at {args.rate:,} events/s for {args.duration:g} s")
    alone = latency_phase(settings, stack, args.rate, args.duration, extra_env={"PIPELINE_SINKS": "redis"})

    say("phase 2: PIPELINE_SINKS=redis,faulty, no outage")
    reset_faulty(settings)
    healthy = latency_phase(settings, stack, args.rate, args.duration, extra_env={"PIPELINE_SINKS": "redis,faulty"})

    say(f"phase 3: PIPELINE_SINKS=redis,faulty, the faulty sink down from t={start:g} s to t={end:g} s")
    since = reset_faulty(settings)
    state = {"down": False, "up_at": 0.0, "checked": 0.0, "caught_up_s": 0.0}
    backlog: dict[int, int] = {}  # the topic's end when the sink came back: its outage backlog

    def outage(elapsed: float) -> None:
        if not state["down"] and start <= elapsed < end:
            client.set(MODE_KEY, "down")
            state["down"] = True
        elif state["down"] and elapsed >= end and not state["up_at"]:
            client.delete(MODE_KEY)
            state["up_at"] = time.monotonic()
            backlog.update(end_offsets(settings.kafka, topic))
        elif state["up_at"] and not state["caught_up_s"] and time.monotonic() - state["checked"] >= 0.2:
            state["checked"] = time.monotonic()
            stored = next_offsets(client, "faulty", topic)
            if all(stored.get(p, 0) >= e for p, e in backlog.items()):
                state["caught_up_s"] = time.monotonic() - state["up_at"]

    sampler = stack_sampler(stack)
    down = latency_phase(
        settings,
        stack,
        args.rate,
        args.duration,
        extra_env={"PIPELINE_SINKS": "redis,faulty"},
        during=outage,
        sampler=sampler,
    )
    # The pipeline is stopped now: count what the sink had written by then against the topic.
    ends = end_offsets(settings.kafka, topic)
    stored = next_offsets(client, "faulty", topic)
    behind = sum(max(0, e - stored.get(p, 0)) for p, e in ends.items())
    deliveries = Counter(int(v) for v in client.hvals(DELIVERIES_KEY))
    written = sum(e - since.get(p, 0) for p, e in ends.items()) - behind

    say("")
    say("RESULTS (commit -> top_engagement:10min)")
    say(f"  redis alone, whole run:                      {describe(alone.latencies, 'probes')}")
    say(f"  redis + healthy faulty lane, whole run:      {describe(healthy.latencies, 'probes')}")
    say(f"  redis + healthy faulty lane, t={start:g}-{end:g} s:    {describe(window(healthy, start, end), 'probes')}")
    say(f"  redis while faulty is down, t={start:g}-{end:g} s:     {describe(window(down, start, end), 'probes')}")
    say(f"  redis after faulty came back, t>={end:g} s:     {describe(window(down, end, 1e9), 'probes')}")
    caught = f"{state['caught_up_s']:.1f} s" if state["caught_up_s"] else "not within the run"
    say(
        f"  faulty reached the topic's end of the moment it came back "
        f"({sum(backlog.values()) - sum(since.values()):,} records since the phase began) {caught} after"
    )
    say(
        f"  faulty after the outage: {written:,} records delivered, {behind:,} still behind when the run ended; "
        f"deliveries per record {dict(sorted(deliveries.items()))}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
