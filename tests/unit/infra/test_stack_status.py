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
