"""Run the engagement pipeline under its supervisor: ``python -m pipeline``.

    python -m pipeline                      # streaming on the local stack, Prism runner
    python -m pipeline --bounded            # read to today's end offsets, then stop (tests, catch-up)
    python -m pipeline --runner flink       # on a local Flink (make flink-bootstrap), parallelism 2
    python -m pipeline --runner dataflow -- --project=P --region=R --temp_location=gs://B/tmp
    python -m pipeline status [--json]     # lag per sink and partition, capture, rates, dead letters, breakers
    python -m pipeline dashboard            # the live leaderboard page
    python -m pipeline rebuild-redis        # rebuild the Redis boards from Kafka into fresh keys, swap them in
    python -m pipeline replay --sink bigquery --from-timestamp 2026-12-06T10:00:00Z   # re-send one sink
    python -m pipeline backfill [--sinks S] # fill empty sinks from the tables, then hand over to the stream

Settings come from the environment (.env.example: PIPELINE_*, LEADERBOARD_*, KAFKA_*, REDIS_*, CDC_*);
the flags here override the runner and the mode; anything after ``--`` goes to Beam unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Final, get_args

import redis
from pydantic import ValidationError

from infra.process import StackError
from infra.settings import LeaderboardSettings, PipelineSettings, Runner, Settings
from pipeline.supervisor import LockHeld, Supervisor
from sinks.registry import lanes

# The views of a running pipeline and the operator's commands: modules of their own, each with a
# main(argv) and its own flags, imported only when named (the supervisor stays without Beam).
COMMANDS: Final = {
    "status": ("pipeline.status.__main__", "what runs, each sink's lag, capture, rates, dead letters, breakers"),
    "dashboard": ("pipeline.dashboard.__main__", "serve the live leaderboard page"),
    "backfill": ("pipeline.backfill.__main__", "fill empty sinks from the tables, then hand over to the stream"),
    "rebuild-redis": ("pipeline.rebuild", "rebuild the Redis boards from Kafka into fresh keys, swap them in"),
    "replay": ("pipeline.replay", "write one sink's records again from a time or from offsets"),
}


def commands_help() -> str:
    width = max(map(len, COMMANDS))
    lines = ["commands (python -m pipeline COMMAND --help for its flags):"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def settings_help() -> str:
    """Every setting the job reads from the environment, with its default, from the typed config."""
    lines = ["settings from the environment (default):"]
    for model in (PipelineSettings, LeaderboardSettings):
        prefix = model.model_config.get("env_prefix", "")
        for name, field in model.model_fields.items():
            if name == "fence_token":
                continue  # set by the supervisor for the job it starts, never by hand
            lines.append(f"  {prefix}{name.upper()}={field.get_default(call_default_factory=True)}")
    lines.append("Kafka, Redis and topic names: KAFKA_*, REDIS_*, CDC_* (see .env.example).")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        usage="python -m pipeline [options] [-- BEAM_OPTIONS ...]\n       python -m pipeline COMMAND [...]",
        description="Run the engagement pipeline under its supervisor, or one of the commands below.",
        epilog=f"{commands_help()}\n\nEverything after -- is passed to Beam's PipelineOptions.\n\n"
        f"{settings_help()}\nWhat each setting does: docs/pipeline.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runner",
        choices=get_args(Runner),
        default=None,
        help="where the job runs (PIPELINE_RUNNER, default prism: local, built by make bootstrap)",
    )
    parser.add_argument(
        "--bounded", action="store_true", help="read each partition up to its end offset at start, write, and exit"
    )
    parser.add_argument(
        "--late-content-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long events of unknown content stay parked, from the content's first miss, before "
        "they are dead-lettered (PIPELINE_LATE_CONTENT_TIMEOUT_S, default 10)",
    )
    parser.add_argument(
        "--consumer-group", default=None, help="the instance lock and consumer group name (PIPELINE_CONSUMER_GROUP)"
    )
    parser.add_argument(
        "--window-minutes", type=int, default=None, help="leaderboard window (LEADERBOARD_WINDOW_MINUTES, default 10)"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, beam_args = argv[:split], argv[split + 1 :]
    return parser.parse_args(argv), beam_args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:
        command: int = importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
        return command
    args, beam_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Flags become environment variables, so the job process the supervisor starts reads the same
    # settings from the one typed config.
    for name, value in {
        "PIPELINE_RUNNER": args.runner,
        "PIPELINE_LATE_CONTENT_TIMEOUT_S": args.late_content_timeout,
        "PIPELINE_CONSUMER_GROUP": args.consumer_group,
        "LEADERBOARD_WINDOW_MINUTES": args.window_minutes,
    }.items():
        if value is not None:
            os.environ[name] = str(value)
    try:
        settings = Settings()
        lanes(settings.pipeline.sinks, settings)  # a typo in PIPELINE_SINKS fails here, not in a restart loop
    except (ValidationError, ValueError) as exc:
        print(f"error: invalid configuration in the environment:\n{exc}", file=sys.stderr)
        return 2
    # The supervisor adds the runner and, for Prism, the endpoint of the Prism it starts itself.
    worker_args = ["--bounded"] if args.bounded else []
    worker_args += beam_args
    try:
        return Supervisor(settings, worker_args).run()
    except (LockHeld, StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(
            f"error: cannot reach Redis for the instance lock ({settings.redis.host}:{settings.redis.port}): {exc}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
