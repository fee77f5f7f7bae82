"""Runner options: what the local Prism runner needs to keep a streaming job alive; Flink's options."""

from apache_beam.options.pipeline_options import PortableOptions

from infra.settings import FlinkSettings
from pipeline.runners import pipeline_options


def test_prism_job_streams_do_not_expire_after_beams_default_five_minutes():
    options = pipeline_options("prism", job_endpoint="localhost:1", streaming=True)
    # PortableRunner uses this as the gRPC deadline of the job's state stream; at the default of
    # 300 s, wait_until_finish raised DEADLINE_EXCEEDED and the streaming job restarted.
    assert options.view_as(PortableOptions).job_server_timeout >= 365 * 24 * 3600


def test_extra_options_still_win():
    options = pipeline_options("prism", job_endpoint="localhost:1", streaming=True, extra=["--job_server_timeout=60"])
    assert options.view_as(PortableOptions).job_server_timeout == 60


def test_flink_job_goes_to_our_job_server_with_the_flink_settings():
    flink = FlinkSettings(parallelism=2, checkpoint_interval_ms=0, execution_retries=0, max_bundle_time_ms=100)
    options = pipeline_options("flink", job_endpoint="localhost:58099", streaming=True, flink=flink)
    args = options.get_all_options(retain_unknown_options=True)
    assert args["runner"] == "PortableRunner"
    assert args["job_endpoint"] == "localhost:58099"
    assert args["environment_type"] == "LOOPBACK"
    assert args["parallelism"] == 2
    assert args["number_of_execution_retries"] == "0"
    assert args["max_bundle_time_mills"] == "100"
    assert "checkpointing_interval" not in args  # off: the source resumes from the sinks' positions
    assert options.view_as(PortableOptions).job_server_timeout >= 365 * 24 * 3600


def test_flink_checkpoints_only_when_asked():
    options = pipeline_options(
        "flink", job_endpoint="localhost:1", streaming=True, flink=FlinkSettings(checkpoint_interval_ms=5000)
    )
    assert options.get_all_options(retain_unknown_options=True)["checkpointing_interval"] == "5000"
