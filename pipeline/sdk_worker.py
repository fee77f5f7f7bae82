"""One Beam Python SDK worker process, as a worker pool starts it (``pipeline.worker_pool``).

Beam's own pool starts ``SdkHarness`` with ``python -c``; this entry point does the same after
what the job process does for its in-process harness with Prism: the harness tuning
(``pipeline.runners.tune_harness``) and the Prometheus endpoint (``infra.telemetry``) on the port
its pool gave it in ``METRICS_PORT``, so each worker process's counters can be scraped.

Two more things a separate process needs:

- Metric short ids of its own. Beam numbers them per process from 1, and Prism keeps one table of
  them per job, not per worker: a second worker's "5" was read as the first worker's "5", and
  Prism failed the job decoding it (``makeslice: cap out of range``). ``WorkerShortIds`` prefixes
  them with the worker id.
- An exit when the process that started it is gone (a job process killed with ``kill -9`` must not
  leave a worker reading Kafka for a job that no longer exists): polled, because a parent-death
  signal fires when the *thread* that started the child ends, and ``StartWorker`` runs on gRPC's
  pool threads.

    python -m pipeline.sdk_worker <control endpoint> <worker id>
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from apache_beam.runners.worker import sdk_worker
from apache_beam.runners.worker.sdk_worker import SdkHarness

from infra import telemetry
from infra.settings_views import MetricsSettings
from pipeline.runners import tune_harness


class WorkerShortIds(sdk_worker.ShortIdCache):
    """Beam's short-id cache with every id prefixed (``:`` never appears in Beam's own hex ids)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def get_short_id(self, monitoring_info: Any) -> str:
        return self._prefix + super().get_short_id(monitoring_info)

    def get_infos(self, short_ids: Any) -> dict[str, Any]:
        infos = super().get_infos([short_id.removeprefix(self._prefix) for short_id in short_ids])
        return {self._prefix + short_id: info for short_id, info in infos.items()}


def exit_with_parent(interval_s: float = 0.5) -> threading.Thread:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        logging.getLogger("pipeline.sdk_worker").error("the process that started this worker is gone: exiting")
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    control, worker_id = (sys.argv[1:] if argv is None else argv)[:2]
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s worker-{worker_id} %(name)s: %(message)s"
    )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    exit_with_parent()
    sdk_worker.SHORT_ID_CACHE = WorkerShortIds(f"{worker_id}:")
    telemetry.serve(MetricsSettings())
    tune_harness()
    SdkHarness(control, worker_id=worker_id, state_cache_size=0, data_buffer_time_limit_ms=-1).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
