"""`make status` prints the HTTP sink's breakers from the report the stack builds."""

from infra.stack import __main__ as cli


class FakeStack:
    def __init__(self, report):
        self.report = report

    def status(self):
        return self.report


SERVICES = {
    "redis": {"pid": 1, "address": "127.0.0.1:56379", "state": "healthy"},
    "connect": {"pid": 2, "address": "127.0.0.1:58083", "state": "healthy"},
}


def test_breakers_are_listed_per_endpoint_and_instance(capsys):
    report = {
        "services": SERVICES,
        "http_breakers": {
            "analytics": [
                {"instance": "b", "state": "open", "failures": 5, "detail": "HTTP 503 from analytics", "at": 0},
                {"instance": "a", "state": "closed", "failures": 0, "detail": "", "at": 0},
            ]
        },
    }
    assert cli.cmd_status(FakeStack(report)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == [
        "http sink circuit breakers (running pipelines, per sink instance):",
        "  analytics            closed     0 failure(s) in a row",
        "  analytics            open       5 failure(s) in a row last failure: HTTP 503 from analytics",
    ]


def test_no_breakers_published_says_so(capsys):
    assert cli.cmd_status(FakeStack({"services": SERVICES, "http_breakers": {}})) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "http sink circuit breakers: none published (no pipeline runs the HTTP sink)"
    )


def test_capture_problems_are_listed_and_make_status_exit_1(capsys):
    report = {
        "services": SERVICES,
        "connector": {
            "name": "engagement-postgres",
            "connector": {"state": "RUNNING"},
            "tasks": [{"id": 0, "state": "FAILED", "trace": "RecordTooLargeException: too large\n\tat x"}],
        },
        "capture_problems": [
            "connector task 0 FAILED: RecordTooLargeException: too large",
            "replication slot engagement_slot is inactive (no consumer connected)",
        ],
    }
    assert cli.cmd_status(FakeStack(report)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-4:] == [
        "connector: engagement-postgres RUNNING (task 0 FAILED)",
        "capture: STOPPED or FAILED",
        "  - connector task 0 FAILED: RecordTooLargeException: too large",
        "  - replication slot engagement_slot is inactive (no consumer connected)",
    ]


def test_healthy_capture_says_so_and_exits_0(capsys):
    report = {
        "services": SERVICES,
        "slot": {
            "slot": "engagement_slot",
            "active": True,
            "wal_status": "reserved",
            "lag_bytes": 2048,
            "retained_bytes": 4096,
            "lag_s": 0.25,
        },
        "capture_problems": [],
    }
    assert cli.cmd_status(FakeStack(report)) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "replication slot: engagement_slot active=True wal_status=reserved lag=2 KiB (0.2 s) retained=4 KiB",
        "capture: ok (connector and tasks RUNNING, slot active, lag within limits)",
    ]


def test_topics_show_replicas_and_partitions_short_of_them(capsys):
    healthy = {"partitions": 16, "cleanup.policy": "delete", "replicas": 3, "min.insync.replicas": "2"}
    report = {
        "services": SERVICES,
        "topics": {
            "engagement.dlq": {**healthy, "partitions": 4, "under_replicated": 0, "offline": 0},
            "engagement.public.engagement_events": {**healthy, "under_replicated": 6, "offline": 0},
        },
    }
    cli.cmd_status(FakeStack(report))
    lines = capsys.readouterr().out.splitlines()
    assert lines[lines.index("topics:") + 1 :][:2] == [
        f"  {'engagement.dlq':<45} partitions=4   cleanup.policy=delete replicas=3 min.insync=2",
        f"  {'engagement.public.engagement_events':<45} partitions=16  cleanup.policy=delete replicas=3 min.insync=2"
        " under-replicated=6",
    ]
