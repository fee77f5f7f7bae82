"""The job process the supervisor starts: submit the pipeline and wait for it.

Not meant to be run by hand (use ``python -m pipeline``); a failure here exits non-zero and the
supervisor restarts it, resuming from the positions the sinks stored.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from infra import telemetry
from infra.settings import Settings
from pipeline import job
from pipeline.flink_job_server import cancel_cluster_jobs, cancel_running_jobs, job_name
from pipeline.lanes import prism_workers
from pipeline.runners import pipeline_options, tune_harness


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.worker")
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--runner", required=True)
    parser.add_argument("--job-endpoint")
    args, beam_args = parser.parse_known_args(argv)
    # The supervisor stops this process with SIGTERM; a Ctrl-C in the terminal reaches the whole
    # group, and only the supervisor should act on it (sinks are atomic, so an abrupt stop is safe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # httpx logs every request at INFO: dozens a second from the HTTP sink.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings()
    loopback = args.runner == "prism" or (args.runner == "flink" and not settings.flink.external)
    if loopback:
        # The DoFns run in this process and, on Prism, in its worker processes (pipeline.runners,
        # "Workers"): one scrape here sees them all.
        workers = prism_workers(settings) if args.runner == "prism" else 1
        telemetry.serve(settings.metrics, also=telemetry.worker_urls(settings.metrics, workers))
        tune_harness()
    if args.runner == "flink" and args.job_endpoint:
        # A job of an earlier attempt (whose harness died with its process, or whose job server
        # was lost with a cluster job still running): never two at once.
        cancel_running_jobs(args.job_endpoint)
        if settings.flink.external:
            cancel_cluster_jobs(settings.flink.rest_url, job_name(settings))
        beam_args = [f"--job_name={job_name(settings)}", *beam_args]
    options = pipeline_options(
        args.runner,
        job_endpoint=args.job_endpoint,
        streaming=not args.bounded,
        extra=beam_args,
        flink=settings.flink,
        bind_host=settings.pipeline.bind_host,
        metrics_port=settings.metrics.port,
    )
    result = job.run(settings, options, bounded=args.bounded)
    state = result.wait_until_finish()
    logging.getLogger("pipeline").info("job ended in state %s", state)
    return 0 if str(state) in ("DONE", "PipelineState.DONE") else 1


if __name__ == "__main__":
    sys.exit(main())
