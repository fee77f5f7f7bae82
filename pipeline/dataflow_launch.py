"""Launch the job on Dataflow and return: the Flex Template's main (infra/dataflow/launch.py), or by hand.

    python -m pipeline.dataflow_launch --project=P --region=R --temp_location=gs://B/tmp \\
        --sdk_container_image=REGION-docker.pkg.dev/P/REPO/engagement-worker:TAG \\
        --kafka_host=10.0.0.5 --redis_host=10.0.0.6 --pipeline_sinks=redis,bigquery

- **Settings as arguments.** An ``--<name>=<value>`` whose upper-cased name is a setting's
  environment variable (``--pipeline_sinks`` is ``PIPELINE_SINKS``, ``--kafka_host`` is
  ``KAFKA_HOST``) sets that setting: this is how Flex Template parameters arrive
  (infra/dataflow/metadata.json). Everything else goes to Beam's ``PipelineOptions``.
- **Secrets by reference.** A password or token given as a parameter must be a Secret Manager
  version (``--redis_password=secretmanager:projects/P/secrets/NAME/versions/V``): parameters are
  shown with the job, and the workers fetch the value themselves (``infra.secrets``). A literal one
  is refused.
- **Real BigQuery.** ``BIGQUERY_EMULATOR_HOST`` defaults to empty here (the local default points at
  the emulator on 127.0.0.1, which no Dataflow worker has).
- **What it runs.** The worker's steps without the supervisor and without waiting: plan from Kafka
  and the sinks' stored positions (``pipeline.job.plan``), build, submit, print the job id, exit 0. A
  Flex Template launcher must return after ``run()``; Dataflow restarts failed work itself, which is
  the supervisor's job locally.
- **The instance lock.** Nothing of ours lives as long as a Dataflow job, so no one could keep the
  lock refreshed. The launch takes the lock's next generation (refusing, like a second supervisor,
  while a live instance holds the lock) and releases the lock at once: the generation is baked into
  the job as its fencing token. Launching is therefore a takeover: an older job of the same consumer
  group (on Dataflow or local) has its writes refused from then on and must be drained or cancelled,
  and any instance started later fences this job out the same way. Dataflow's own guard against
  twins is the job name: give every launch of one consumer group the same ``--job_name`` and
  Dataflow refuses a second running job, or replaces it with ``--update``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping

import redis
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from infra.secrets import SECRET_MANAGER_PREFIX
from infra.settings import Settings
from pipeline import job
from pipeline.instance_lock import InstanceLock, LockHeld
from pipeline.runners import pipeline_options
from sinks.fencing import quick_client

_log = logging.getLogger("pipeline.dataflow_launch")

# Settings whose local default makes no sense on Dataflow, unless given.
DATAFLOW_DEFAULTS = {"BIGQUERY_EMULATOR_HOST": ""}


def _setting_fields() -> Iterator[tuple[str, FieldInfo]]:
    """``(environment variable, field)`` of every setting in a group of ``Settings``."""
    for field in Settings.model_fields.values():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseSettings):
            prefix = model.model_config.get("env_prefix", "")
            for name, sub in model.model_fields.items():
                yield f"{prefix}{name}".upper(), sub


def setting_names() -> set[str]:
    """The environment variable of every setting in a group of ``Settings`` (``PIPELINE_SINKS``, ...)."""
    return {name for name, _ in _setting_fields()}


def secret_names() -> set[str]:
    """The environment variable of every password or token setting."""
    return {name for name, field in _setting_fields() if "Secret" in str(field.annotation)}


def literal_secrets(values: Mapping[str, str]) -> list[str]:
    """The secret settings among ``values`` given as a value rather than a Secret Manager reference."""
    secret = secret_names()
    return sorted(n for n, v in values.items() if n in secret and v and not v.startswith(SECRET_MANAGER_PREFIX))


def split_args(argv: list[str], names: set[str]) -> tuple[dict[str, str], list[str]]:
    """``(settings, beam_args)``: ``--name=value`` / ``--name value`` of a known setting, the rest."""
    settings: dict[str, str] = {}
    beam_args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name and name.upper() in names and name.upper() != "PIPELINE_FENCE_TOKEN":
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                i, value = i + 1, argv[i + 1]
            settings[name.upper()] = value
        else:
            beam_args.append(arg)
        i += 1
    return settings, beam_args


def take_generation(settings: Settings, client: redis.Redis | None = None) -> int:
    """The next generation of the consumer group's instance lock, for this job's fencing token."""
    ps = settings.pipeline
    lock = InstanceLock(client or quick_client(settings.redis, 5.0), ps.consumer_group, ps.lock_ttl_s)
    generation = lock.acquire()
    lock.release()
    return generation


def launch_settings(values: Mapping[str, str], environ: Mapping[str, str]) -> Settings:
    """Settings from the environment, overridden by ``values``, with ``DATAFLOW_DEFAULTS`` under both."""
    overrides = {**{k: v for k, v in DATAFLOW_DEFAULTS.items() if k not in environ}, **values}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        return Settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(argv: list[str] | None = None, *, client: redis.Redis | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    values, beam_args = split_args(argv, setting_names())
    if literal := literal_secrets(values):
        print(
            f"error: {', '.join(literal)} given as a value; give a Secret Manager version instead "
            f"({SECRET_MANAGER_PREFIX}projects/P/secrets/NAME/versions/V): parameters are shown with the job",
            file=sys.stderr,
        )
        return 2
    settings = launch_settings(values, os.environ)
    try:
        generation = take_generation(settings, client)
    except LockHeld as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    settings = settings.model_copy(
        update={"pipeline": settings.pipeline.model_copy(update={"fence_token": generation})}
    )
    _log.info("launching under generation %d of %s", generation, settings.pipeline.consumer_group)
    options = pipeline_options("dataflow", job_endpoint=None, streaming=True, extra=beam_args)
    result = job.run(settings, options)
    job_id = getattr(result, "job_id", lambda: None)()
    _log.info("submitted: Dataflow job %s (state %s)", job_id, result.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
