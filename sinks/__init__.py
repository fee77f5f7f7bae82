"""Sinks of the pipeline behind one contract (``sinks.base``): Redis leaderboards and the dead-letter topic."""
