"""Everything that differs between runners lives here: the transforms in ``pipeline.job`` do not change.

- ``prism`` (local, the default): the supervisor starts the Prism binary built by ``make bootstrap``
  (from the Go module proxy, with ``infra/prism/listen-host.patch``; Beam would otherwise download
  it from GitHub at run time) and submits the job to it with ``PortableRunnerOnHost`` (Beam's
  ``PortableRunner``, see below) and ``LOOPBACK`` workers, i.e. what ``PrismRunner
  --prism_location`` does, but with the Prism process owned and stopped by our supervisor.
- ``flink``: the supervisor starts Beam's Flink job server from the jars ``make flink-bootstrap``
  resolved (``pipeline.flink_job_server``; Beam's own ``FlinkRunner`` would download a job-server
  jar that Maven Central does not have) and the job is submitted to it with ``PortableRunnerOnHost``,
  with the ``FLINK_*`` settings as Flink options (``flink_options``): on a cluster with
  ``EXTERNAL`` workers (the worker pool next to each TaskManager, ``pipeline.worker_pool``),
  embedded with ``LOOPBACK`` workers.
- ``dataflow``: ``DataflowRunner`` with ``--project``, ``--region``, ``--temp_location`` and the
  usual options; workers need network access to Kafka and Redis (private IPs, ``--subnetwork``).
- ``direct``: Beam's DirectRunner. For a streaming job with our unbounded source it hands over to
  Prism only when the pipeline passes its support check, and otherwise falls back to a runner that
  cannot run an unbounded splittable DoFn; use it for bounded runs only.

Extra Beam options can always be appended after ``--`` on the command line.

Nothing the job opens listens beyond ``PIPELINE_BIND_HOST`` (loopback by default): Prism is built
with a ``-job_host`` flag (``infra/prism/listen-host.patch``), and the job is submitted with
``PortableRunnerOnHost``, whose ``LOOPBACK`` worker pool binds that host where Beam's binds every
interface.

With ``LOOPBACK`` (Prism, embedded Flink) the SDK harness runs inside the job process, so
``tune_harness`` can adjust it; ``pipeline.sdk_worker`` does the same in a worker pool's workers
(on Dataflow the harness is the runner's own process and keeps Beam's defaults).

Workers. Prism starts one SDK worker per environment, and a worker is one process with one GIL,
so a job with one environment uses one core whatever the machine has. With
``PIPELINE_PRISM_WORKERS`` above one, ``pipeline.job`` marks the lane shards of worker N > 0
(``pipeline.lanes.shards``) with ``WORKER_HINT``; Beam gives each distinct hint its own
environment, and ``PortableRunnerOnHost`` serves those with ``pipeline.worker_pool.WorkerPool``,
which starts each as its own process (``pipeline.sdk_worker``, metrics on
``--loopback_metrics_port`` + N). Worker 0 is the job process. Prism runs a stage's bundles on its
environment's worker only, so a partition is read by one process, and its residuals never move.
"""

from __future__ import annotations

import atexit
import copy
import gc
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, get_args

import grpc
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, PortableOptions
from apache_beam.portability import python_urns
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.portability.portable_runner import PortableRunner
from apache_beam.runners.worker import sdk_worker_main, statesampler
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer, kill_process_gracefully
from apache_beam.transforms import environments
from apache_beam.transforms.resources import ResourceHint
from apache_beam.utils import thread_pool_executor

from infra.addresses import address, bind_address
from infra.settings import FlinkSettings, Runner
from pipeline.worker_pool import WorkerPool

RUNNERS: Final = get_args(Runner)
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


class WorkerHint(ResourceHint):
    """Which worker process of a job on Prism runs a transform (``pipeline.lanes.shards``): Beam
    gives transforms with different hints different environments, and Prism starts one worker
    per environment. Runners that do not know the hint ignore it."""

    urn = "engagement:resources:worker:v1"


WORKER_HINT = "engagement_worker"
ResourceHint.register_resource_hint(WORKER_HINT, WorkerHint)


class LoopbackHostOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--loopback_host",
            default="127.0.0.1",
            help="where the SDK harness pool of a LOOPBACK job listens (PortableRunnerOnHost); empty: every interface",
        )
        parser.add_argument(
            "--loopback_metrics_port",
            type=int,
            default=0,
            help="the job process's metrics port; worker process N (WORKER_HINT) serves its own on this + N (0: off)",
        )


class PortableRunnerOnHost(PortableRunner):
    """Beam's ``PortableRunner``, whose ``LOOPBACK`` worker pool listens on ``--loopback_host``.

    For a ``LOOPBACK`` environment, ``PortableRunner`` starts an SDK worker pool in the job process
    and submits the environment as ``EXTERNAL`` at that pool's address. Beam's pool
    (``BeamFnExternalWorkerPoolServicer.start``) listens on every interface with no way to say
    otherwise, and it starts SDK harnesses for whoever asks. This is the same method with the
    pool bound to the given host (Beam 2.77's, otherwise unchanged: the same servicer, state cache
    size, data buffer time limit and ``use_loopback_process_worker`` experiment).
    """

    @staticmethod
    def start_and_replace_loopback_environments(pipeline: Any, options: PipelineOptions) -> list[Callable[[], None]]:
        host = options.view_as(LoopbackHostOptions).loopback_host
        portable_options = copy.deepcopy(options.view_as(PortableOptions))
        experiments = options.view_as(DebugOptions).experiments or []
        cleanup: list[Callable[[], None]] = []
        metrics_port = options.view_as(LoopbackHostOptions).loopback_metrics_port
        for env in pipeline.components.environments.values():
            if env.urn != python_urns.EMBEDDED_PYTHON_LOOPBACK:
                continue
            worker = int(env.resource_hints.get(WorkerHint.urn, b"0"))
            if worker:
                # A process of its own (pipeline.sdk_worker), so that it has its own GIL.
                servicer: BeamFnExternalWorkerPoolServicer = WorkerPool([metrics_port + worker] if metrics_port else [])
            else:
                servicer = BeamFnExternalWorkerPoolServicer(
                    use_process=options.view_as(DebugOptions).lookup_experiment("use_loopback_process_worker", False),
                    state_cache_size=sdk_worker_main._get_state_cache_size_bytes(options=options),
                    data_buffer_time_limit_ms=sdk_worker_main._get_data_buffer_time_limit_ms(experiments),
                )
            server, port = serve_worker_pool(servicer, host)
            portable_options.environment_type = "EXTERNAL"
            portable_options.environment_config = address(host, port)
            external = environments.ExternalEnvironment.from_options(portable_options).to_runner_api(None)
            env.urn = external.urn
            env.payload = external.payload
            cleanup.append(lambda server=server: server.stop(1))
        return cleanup


def serve_worker_pool(servicer: BeamFnExternalWorkerPoolServicer, host: str) -> tuple[grpc.Server, int]:
    """Serve ``servicer`` on ``host`` at a free port (as Beam's ``start`` does on every interface);
    the server and its port."""
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    port = server.add_insecure_port(bind_address(host, 0))
    if not port:
        raise OSError(f"the SDK harness pool cannot listen on {host!r}")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(servicer, server)
    server.start()

    def kill_workers() -> None:
        for process in servicer._worker_processes.values():
            kill_process_gracefully(process)

    atexit.register(kill_workers)
    return server, port


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
    bind_host: str = "127.0.0.1",
    metrics_port: int = 0,
) -> PipelineOptions:
    """The options of a job on ``runner``; ``bind_host`` is where a ``LOOPBACK`` job's SDK harness
    pool listens (``PIPELINE_BIND_HOST``), ``metrics_port`` the job process's metrics port, after
    which its worker processes serve theirs."""
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {', '.join(RUNNERS)}")
    args: list[str] = []
    if runner == "prism":
        if job_endpoint is None:
            raise ValueError("the prism runner needs the job endpoint of a running Prism")
        args += [
            "--runner=pipeline.runners.PortableRunnerOnHost",
            f"--job_endpoint={job_endpoint}",
            "--environment_type=LOOPBACK",
            f"--loopback_host={bind_host}",
            f"--loopback_metrics_port={metrics_port}",
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
            "--runner=pipeline.runners.PortableRunnerOnHost",
            f"--job_endpoint={job_endpoint}",
            f"--loopback_host={bind_host}",
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
