"""The Grafana dashboard and the docs name only metrics that infra.telemetry declares."""

import json
import re

from infra import telemetry
from infra.settings import REPO_ROOT

SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in telemetry.METRICS:
            return name[: -len(suffix)]
    return name


def names_in(text: str) -> set[str]:
    return {base(name) for name in re.findall(r"\bengagement_[a-z0-9_]+", text)}


def test_every_metric_the_grafana_dashboard_queries_is_declared():
    dashboard = json.loads((REPO_ROOT / "infra/monitoring/grafana/engagement-pipeline.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert names_in(exprs) - set(telemetry.METRICS) == set()


def test_the_docs_list_every_declared_metric_and_no_other():
    doc = (REPO_ROOT / "docs/observability.md").read_text()
    table = doc.split("<!-- metrics -->")[1]
    assert names_in(table) == set(telemetry.METRICS)
