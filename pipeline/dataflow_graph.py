"""The Dataflow job, built offline: what Dataflow would receive, with no submission and no network.

    python -m pipeline.dataflow_graph            # make dataflow-graph: the job's type and steps
    python -m pipeline.dataflow_graph --depth 4  # deeper into each composite step

``DataflowRunner`` with ``--dry_run=True`` and ``--no_auth`` (as Beam's own runner tests do) runs
everything a submission runs up to the API call: its transform overrides, the portable pipeline
proto with every DoFn pickled into it, the Docker environment, streaming mode and the job request.
The lanes come from ``pipeline.job.offline_plans`` (the topics' configured partition counts, every
partition from offset 0), so neither Kafka nor the sinks are asked where to start.

Settings come from the environment as for a real launch (``PIPELINE_SINKS``, ``PIPELINE_SOURCE``,
...); Beam options after ``--`` are added to the dry run's (e.g. ``--sdk_container_image=...``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from infra.settings import Settings
from pipeline.job import build, offline_plans
from pipeline.runners import pipeline_options

# Valid-looking values for what a dry run checks but never contacts: --dry_run skips the staging
# bucket's checks and the API call. (--dataflow_endpoint must stay a URL; the default is one.)
DRY_RUN_ARGS = (
    "--project=dry-run-project",
    "--region=us-central1",
    "--job_name=engagement-pipeline-dry-run",
    "--temp_location=gs://dry-run-bucket/tmp",
    "--staging_location=gs://dry-run-bucket/staging",
    "--no_auth",
    "--dry_run=True",
    "--sdk_location=container",
)


@dataclass
class DryRun:
    """What the runner built: the Dataflow job request and the portable pipeline inside it."""

    job: Any  # apache_beam.runners.dataflow.internal.apiclient.Job
    pipeline: beam_runner_api_pb2.Pipeline

    @property
    def streaming(self) -> bool:
        from apache_beam.runners.dataflow.internal import apiclient

        return bool(self.job.proto.type == apiclient.dataflow.JobType.JOB_TYPE_STREAMING)

    def steps(self, depth: int = 3) -> set[str]:
        """Every transform's full name down to ``depth`` levels (``Lane/Step/Part``)."""
        return {
            t.unique_name
            for t in self.pipeline.components.transforms.values()
            if t.unique_name and not t.unique_name.startswith("ref_") and t.unique_name.count("/") < depth
        }

    def dofns(self) -> Iterator[tuple[str, Any]]:
        """``(step, DoFn)`` for every ParDo, unpickled from the job as a worker would."""
        for t in self.pipeline.components.transforms.values():
            if t.spec.urn == common_urns.primitives.PAR_DO.urn:
                payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
                if payload.do_fn.urn == "beam:dofn:pickled_python_info:v1":
                    yield t.unique_name, pickler.loads(payload.do_fn.payload)[0]

    def container_images(self) -> set[str]:
        images = set()
        for env in self.pipeline.components.environments.values():
            if env.urn == common_urns.environments.DOCKER.urn:
                images.add(beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image)
        return images


def dry_run(settings: Settings, partitions: Mapping[str, int] | None = None, extra: Sequence[str] = ()) -> DryRun:
    """Build the job as ``python -m pipeline --runner dataflow`` would, and stop before submitting it."""
    # The runner's options exactly as the worker makes them for `--runner dataflow` (streaming).
    options = pipeline_options("dataflow", job_endpoint=None, streaming=True, extra=[*DRY_RUN_ARGS, *extra])
    p = beam.Pipeline(options=options)
    build(p, settings, offline_plans(settings, partitions))
    result = p.run()
    return DryRun(result.job, p.runner.proto_pipeline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.dataflow_graph", description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=3, help="levels of each step's name to show (default 3)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    # Beam warns about our source's generator style at every DoFn it pickles; not news here.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    settings = Settings()
    result = dry_run(settings, extra=extra)
    print(
        f"job: {'streaming' if result.streaming else 'batch'}, sinks {settings.pipeline.sinks!r}, "
        f"source {settings.pipeline.source!r}, image {', '.join(sorted(result.container_images()))}"
    )
    for step in sorted(result.steps(args.depth)):
        print(f"{'  ' * step.count('/')}{step.rsplit('/', 1)[-1]}")
    print(
        f"{len(result.steps(args.depth))} steps (depth {args.depth}); "
        f"{sum(1 for _ in result.dofns())} DoFns unpickled from the job"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
