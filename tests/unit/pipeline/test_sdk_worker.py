"""A worker process's metric short ids (pipeline.sdk_worker.WorkerShortIds): unique per worker."""

from apache_beam.metrics import monitoring_infos
from apache_beam.runners.worker.sdk_worker import ShortIdCache

from pipeline.sdk_worker import WorkerShortIds


def info(name: str):
    return monitoring_infos.int64_user_counter("ns", name, 1)


def test_ids_are_prefixed_so_two_workers_never_share_one_and_resolve_back():
    mine, other = WorkerShortIds("w2:"), ShortIdCache()
    a, b = mine.get_short_id(info("a")), mine.get_short_id(info("b"))
    assert (a, b) == ("w2:1", "w2:2")
    assert other.get_short_id(info("z")) == "1"  # the job process's own numbering
    resolved = mine.get_infos([b, a])
    assert set(resolved) == {a, b}
    assert resolved[a].labels["NAME"] == "a" and resolved[b].labels["NAME"] == "b"
    assert resolved[a].payload == b""  # only the identity travels, as with Beam's cache
