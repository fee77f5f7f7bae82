"""Sinks of the pipeline: Redis leaderboards, BigQuery, an external HTTP endpoint (issue 7 on)."""
