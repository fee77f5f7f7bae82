"""Everything that differs between runners lives here: the transforms in ``pipeline.job`` do not change.

- ``prism`` (local, the default): the supervisor starts the Prism binary built by ``make bootstrap``
  (``go install``; Beam would otherwise download it from GitHub at run time) and submits the job to
  it with ``PortableRunner`` and ``LOOPBACK`` workers, i.e. what ``PrismRunner --prism_location``
  does, but with the Prism process owned and stopped by our supervisor.
- ``flink``: the supervisor starts Beam's Flink job server from the jars ``make flink-bootstrap``
  resolved (``pipeline.flink_job_server``; Beam's own ``FlinkRunner`` would download a job-server
  jar that Maven Central does not have) and the job is submitted to it with ``PortableRunner``,
  with the ``FLINK_*`` settings as Flink options (``flink_options``): on a cluster with
  ``EXTERNAL`` workers (the worker pool next to each TaskManager, ``pipeline.worker_pool``),
  embedded with ``LOOPBACK`` workers.
- ``dataflow``: ``DataflowRunner`` with ``--project``, ``--region``, ``--temp_location`` and the
  usual options; workers need network access to Kafka and Redis (private IPs, ``--subnetwork``).
- ``direct``: Beam's DirectRunner. For a streaming job with our unbounded source it hands over to
  Prism only when the pipeline passes its support check, and otherwise falls back to a runner that
  cannot run an unbounded splittable DoFn; use it for bounded runs only.

Extra Beam options can always be appended after ``--`` on the command line.

With ``LOOPBACK`` (Prism, embedded Flink) the SDK harness runs inside the job process, so
``tune_harness`` can adjust it; ``pipeline.sdk_worker`` does the same in a worker pool's workers
(on Dataflow the harness is the runner's own process and keeps Beam's defaults).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.worker import statesampler

from infra.settings import FlinkSettings

RUNNERS = ("prism", "flink", "dataflow", "direct")
JOB_STREAM_DEADLINE_S = 10 * 365 * 24 * 3600  # ten years: a streaming job runs until stopped

# Beam's state sampler thread sleeps up to 200 ms between samples, and each bundle ends by joining
# it: with our one-second source calls that idled the bundle thread for about 8 % of the time.
STATE_SAMPLING_PERIOD_MS = 10
# Young collections every 50,000 tracked allocations instead of 700 (see tune_harness).
GC_THRESHOLDS = (50_000, 20, 20)
# The bundle thread gives the GIL up in every consume() and Redis call and must win it back from the
# sink's writer thread: at Python's default of 5 ms that wait was a visible share of its time.
SWITCH_INTERVAL_S = 0.0005


def tune_harness() -> None:
    """Tune the process that runs an SDK harness: the job process of a ``LOOPBACK`` job (call once,
    before submitting it) or a worker of a worker pool (``pipeline.sdk_worker``).

    - The state sampler's period: Beam gives no option for it, so the default of its constructor is
      changed; the sampler thread runs without the GIL and costs nothing measurable at 10 ms.
    - The garbage collector: what the job built while starting (Beam, gRPC, protobuf modules) is
      moved out of the collector's generations with ``gc.freeze()``, and young collections run
      less often. The records on the hot path are ``gc=False`` structs (``pipeline.model``), so
      what is left to collect is mostly short-lived dicts and lists.
    - The GIL switch interval (``SWITCH_INTERVAL_S``).
    """
    statesampler.StateSampler.__init__.__defaults__ = (STATE_SAMPLING_PERIOD_MS,)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def flink_options(flink: FlinkSettings, *, streaming: bool = True) -> list[str]:
    """Flink's options for a job on our job server; its runner options are described by the job
    server itself, so ``PortableRunner`` passes them on. A bounded job runs in Flink's batch mode,
    without checkpoints: with them, its source's deferred residuals were rescheduled so slowly that
    8,000 events took more than 5 minutes."""
    args = [
        f"--parallelism={flink.job_parallelism}",
        f"--max_bundle_time_mills={flink.max_bundle_time_ms}",
    ]
    if flink.external:
        args += [
            "--environment_type=EXTERNAL",
            f"--environment_config={flink.worker_pool}",
            f"--sdk_worker_parallelism={flink.sdk_workers}",
        ]
    else:
        args.append("--environment_type=LOOPBACK")
    # -1: the option is left out and the cluster's restart strategy applies (FlinkSettings).
    if flink.restarts >= 0:
        args.append(f"--number_of_execution_retries={flink.restarts}")
    if streaming and flink.checkpoint_interval_ms > 0:
        args.append(f"--checkpointing_interval={flink.checkpoint_interval_ms}")
    return args


def pipeline_options(
    runner: str,
    *,
    job_endpoint: str | None,
    streaming: bool,
    extra: Sequence[str] = (),
    flink: FlinkSettings | None = None,
) -> PipelineOptions:
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    args: list[str] = []
    if runner == "prism":
        if job_endpoint is None:
            raise ValueError("the prism runner needs the job endpoint of a running Prism")
        args += [
            "--runner=PortableRunner",
            f"--job_endpoint={job_endpoint}",
            "--environment_type=LOOPBACK",
            # Prism splits long-running SDF calls on its own; our restrictions refuse runner splits
            # anyway, and Beam 2.77's split path can fail on them ("cannot convert float NaN").
            "--experiments=prism_disable_sdf_split",
            # PortableRunner opens the job's state and message streams with this as their gRPC
            # deadline (default 300 s): when it expires, wait_until_finish raises DEADLINE_EXCEEDED
            # and a streaming job's process exits, so the job restarted every five minutes (a
            # 4-5 s stall in the latency figures). Prism is ours and already up, so nothing else
            # waits on this value.
            f"--job_server_timeout={JOB_STREAM_DEADLINE_S}",
        ]
    elif runner == "flink":
        if job_endpoint is None:
            raise ValueError("the flink runner needs the job endpoint of a running Flink job server")
        args += [
            "--runner=PortableRunner",
            f"--job_endpoint={job_endpoint}",
            f"--job_server_timeout={JOB_STREAM_DEADLINE_S}",  # as for Prism
            *flink_options(flink or FlinkSettings(), streaming=streaming),
        ]
    elif runner == "dataflow":
        args += ["--runner=DataflowRunner"]
    else:
        args += ["--runner=DirectRunner"]
    if streaming:
        args.append("--streaming")
    return PipelineOptions([*args, *extra])
