"""The Flink suite (make test-flink) runs on the integration tests' stack and fixtures: the same
ports (+100), folder and run-unique names, started and removed here for this session."""

from tests.integration.conftest import db, settings, stack  # noqa: F401
