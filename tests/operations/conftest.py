"""The operations suite (make test-operations: backfill, rebuild, replay) runs on the integration
tests' stack and fixtures: the same ports (+100), folder and run-unique names, started and removed
here for this session. Apart from make test because it is slow (about 5 minutes), and because a
backfill's history and a rebuild's replay of whole topics would change what the capture tests there
read from a fresh stack."""

from tests.integration.conftest import db, settings, stack  # noqa: F401
