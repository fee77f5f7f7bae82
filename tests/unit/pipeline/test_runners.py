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


def test_embedded_flink_job_runs_its_python_in_the_job_process_and_never_restarts_itself():
    flink = FlinkSettings(parallelism=2, checkpoint_interval_ms=0, max_bundle_time_ms=100)
    options = pipeline_options("flink", job_endpoint="localhost:58099", streaming=True, flink=flink)
    args = options.get_all_options(retain_unknown_options=True)
    assert args["runner"] == "pipeline.runners.PortableRunnerOnHost"
    assert args["loopback_host"] == "127.0.0.1"
    assert args["job_endpoint"] == "localhost:58099"
    assert args["environment_type"] == "LOOPBACK"
    assert args["parallelism"] == 2
    # The harness dies with the job process: the supervisor submits again, Flink must not retry.
    assert args["number_of_execution_retries"] == "0"
    assert args["max_bundle_time_mills"] == "100"
    assert "checkpointing_interval" not in args
    assert options.view_as(PortableOptions).job_server_timeout >= 365 * 24 * 3600


def test_cluster_job_runs_its_python_in_the_worker_pools_with_checkpoints_and_the_clusters_restarts():
    flink = FlinkSettings(master="127.0.0.1:58081", environment="external", taskmanagers=3, slots=2)
    args = pipeline_options("flink", job_endpoint="localhost:1", streaming=True, flink=flink).get_all_options(
        retain_unknown_options=True
    )
    assert args["environment_type"] == "EXTERNAL"
    assert args["environment_config"] == "beam-worker-pool:58050"
    assert args["sdk_worker_parallelism"] == "1"
    assert args["parallelism"] == 6  # every slot: 3 TaskManagers x 2
    assert args["checkpointing_interval"] == "30000"
    assert "number_of_execution_retries" not in args  # the cluster's exponential back-off applies


def test_cluster_parallelism_is_capped_at_the_16_partitions_of_the_event_topic():
    assert FlinkSettings(taskmanagers=10, slots=2).job_parallelism == 16
    assert FlinkSettings(taskmanagers=10, slots=2, parallelism=4).job_parallelism == 4


def test_explicit_execution_retries_are_passed_on_for_a_cluster_job():
    flink = FlinkSettings(environment="external", execution_retries=5)
    args = pipeline_options("flink", job_endpoint="localhost:1", streaming=True, flink=flink).get_all_options(
        retain_unknown_options=True
    )
    assert args["number_of_execution_retries"] == "5"


def test_flink_checkpoints_only_when_asked():
    options = pipeline_options(
        "flink", job_endpoint="localhost:1", streaming=True, flink=FlinkSettings(checkpoint_interval_ms=5000)
    )
    assert options.get_all_options(retain_unknown_options=True)["checkpointing_interval"] == "5000"


def test_a_bounded_flink_job_runs_without_checkpoints():
    flink = FlinkSettings(master="127.0.0.1:58081", environment="external", checkpoint_interval_ms=30_000)
    args = pipeline_options("flink", job_endpoint="localhost:1", streaming=False, flink=flink).get_all_options(
        retain_unknown_options=True
    )
    assert "checkpointing_interval" not in args
    assert args["environment_type"] == "EXTERNAL"
