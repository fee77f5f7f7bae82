"""Backfill from Postgres: the tables, read in one snapshot, through the stream's transforms into the sinks."""
