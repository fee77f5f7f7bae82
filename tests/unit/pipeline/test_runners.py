"""Runner options: what the local Prism runner needs to keep a streaming job alive."""

from apache_beam.options.pipeline_options import PortableOptions

from pipeline.runners import pipeline_options


def test_prism_job_streams_do_not_expire_after_beams_default_five_minutes():
    options = pipeline_options("prism", job_endpoint="localhost:1", streaming=True)
    # PortableRunner uses this as the gRPC deadline of the job's state stream; at the default of
    # 300 s, wait_until_finish raised DEADLINE_EXCEEDED and the streaming job restarted.
    assert options.view_as(PortableOptions).job_server_timeout >= 365 * 24 * 3600


def test_extra_options_still_win():
    options = pipeline_options("prism", job_endpoint="localhost:1", streaming=True, extra=["--job_server_timeout=60"])
    assert options.view_as(PortableOptions).job_server_timeout == 60
