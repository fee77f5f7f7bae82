"""One Beam Python SDK worker process, as a worker pool starts it (``pipeline.worker_pool``).

Beam's own pool starts ``SdkHarness`` with ``python -c``; this entry point does the same after
what the job process does for its in-process harness with Prism: the harness tuning
(``pipeline.runners.tune_harness``) and the Prometheus endpoint (``infra.telemetry``) on the port
its pool gave it in ``METRICS_PORT``, so each worker process's counters can be scraped.

    python -m pipeline.sdk_worker <control endpoint> <worker id>
"""

from __future__ import annotations

import logging
import sys

from apache_beam.runners.worker.sdk_worker import SdkHarness

from infra import telemetry
from infra.settings_views import MetricsSettings
from pipeline.runners import tune_harness


def main(argv: list[str] | None = None) -> int:
    control, worker_id = (sys.argv[1:] if argv is None else argv)[:2]
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s worker-{worker_id} %(name)s: %(message)s"
    )
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    telemetry.serve(MetricsSettings())
    tune_harness()
    SdkHarness(control, worker_id=worker_id, state_cache_size=0, data_buffer_time_limit_ms=-1).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
