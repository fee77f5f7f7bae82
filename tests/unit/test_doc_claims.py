"""Every `make` target, setting and file under the project's folders that README.md and docs/ name
exists, every default a settings table gives is the code's, and .env.example names every setting.

Claims are read from code (backticks and fenced blocks), where the docs put commands, names and
paths, and from table rows that start with a setting; prose is not parsed. A planted false claim of
each kind must be found.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from infra.settings import REPO_ROOT, HttpSinkSettings, Settings
from sinks.http_routes import ROUTE_ENV_PREFIX

DOCS = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")])
TOP_DIRS = ("docs", "generator", "infra", "loadtest", "pipeline", "sinks", "tests", ".ci", ".stack")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")
_MAKE = re.compile(r"(?:^|[\s;&|(])make ([a-z][a-z0-9-]*)")
_ENV = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
_PATH = re.compile(r"^(?:\./)?(?:" + "|".join(re.escape(d) for d in TOP_DIRS) + r")/[\w./*<>{}-]*$")


def setting_groups(model: type[BaseSettings] = Settings) -> Iterator[type[BaseSettings]]:
    for field in model.model_fields.values():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            yield kind
            yield from setting_groups(kind)


def env_names(group: type[BaseSettings]) -> list[tuple[str, ...]]:
    """Per setting of ``group``, the environment names it is read from (seed 004's and ours)."""
    prefix = group.model_config.get("env_prefix", "")
    names = []
    for name, field in group.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(tuple(str(choice).upper() for choice in alias.choices))
        else:
            names.append((alias.upper() if isinstance(alias, str) else f"{prefix}{name.upper()}",))
    return names


EACH_SETTING = [choices for group in setting_groups() for choices in env_names(group)]
SETTINGS = frozenset(name for choices in EACH_SETTING for name in choices)
PREFIXES = tuple(sorted({g.model_config.get("env_prefix", "") for g in setting_groups()} - {""}, key=len, reverse=True))
TARGETS = frozenset(re.findall(r"^([a-z][a-z0-9-]*):", (REPO_ROOT / "Makefile").read_text(), re.M))
_COMPOSE = (REPO_ROOT / "docker-compose.yml").read_text()
# Real names that are not settings: the containers' environment in docker-compose.yml and what it
# interpolates, and what a routes file may read (sinks.http_routes: HTTP_SINK_ROUTE_* and
# HTTP_SINK_ROUTES_ENV_ALLOW).
_CONTAINER_ENV = re.findall(r"^\s+([A-Z][A-Z0-9_]*):", _COMPOSE, re.M)
_INTERPOLATED = re.findall(r"\$\{([A-Z][A-Z0-9_]*)", _COMPOSE)
OTHER_ENV = frozenset(_CONTAINER_ENV + _INTERPOLATED) | HttpSinkSettings().routes_env_names


def defaults() -> dict[str, object]:
    """Each setting's default, by every environment name it is read from."""
    found: dict[str, object] = {}
    for group in setting_groups():
        for (_, field), choices in zip(group.model_fields.items(), env_names(group), strict=True):
            value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
            found.update(dict.fromkeys(choices, value))
    return found


DEFAULTS = defaults()
_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]+?) \|", re.M)


_DURATION = re.compile(r"^([\d.,]+) (ms|s|seconds?|minutes?|hours?|days?)$")
_SECONDS = {"ms": 0.001, "s": 1, "second": 1, "seconds": 1, "minute": 60, "minutes": 60, "hour": 3600}
_SECONDS |= {"hours": 3600, "day": 86400, "days": 86400}
_NUMBER = re.compile(r"^-?[\d,._]+$")
_UNIT_OF = {"_MS": 0.001, "_S": 1, "_MINUTES": 60}  # a setting's unit, from its name


def same_default(name: str, written: str, default: object) -> bool:
    """Whether a table's default column says ``default``: a literal in backticks, empty/unset, or a
    duration in words (``7 days``) for a setting whose name gives its unit."""
    if written in ("empty", "unset") or written.startswith("unset "):
        return default in (None, "")
    duration = _DURATION.match(written)
    if duration:
        unit = next((u for suffix, u in _UNIT_OF.items() if name.endswith(suffix)), None)
        seconds = float(duration[1].replace(",", "")) * _SECONDS[duration[2]]
        return unit is not None and isinstance(default, int | float) and float(default) * unit == seconds
    if isinstance(default, Path):
        default = default.relative_to(REPO_ROOT) if default.is_relative_to(REPO_ROOT) else default
    literal = written.strip("`")
    if isinstance(default, bool):
        return literal == str(default).lower()
    if isinstance(default, int | float):
        try:
            return float(literal.replace(",", "").replace("_", "")) == float(default)
        except ValueError:
            return False
    return literal == ("" if default is None else str(default))


def code_of(text: str) -> list[str]:
    """The fenced blocks and the backtick spans outside them."""
    blocks = _FENCE.findall(text)
    return [*blocks, *_SPAN.findall(_FENCE.sub("", text))]


def false_claims(text: str, root: Path = REPO_ROOT) -> list[str]:
    found = []
    for name, written in _ROW.findall(text):
        checked = (
            written.startswith("`")
            or written.split()[0] in ("empty", "unset")
            or _DURATION.match(written)
            or _NUMBER.match(written)
        )
        if name in DEFAULTS and checked and not same_default(name, written.strip(), DEFAULTS[name]):
            found.append(f"setting `{name}` defaults to {DEFAULTS[name]!r}, not {written.strip()}")
    for code in code_of(text):
        for target in _MAKE.findall(code):
            if target not in TARGETS:
                found.append(f"make target `{target}` is not in the Makefile")
        for name in _ENV.findall(code):
            if name.startswith(PREFIXES) and name not in SETTINGS | OTHER_ENV and not name.startswith(ROUTE_ENV_PREFIX):
                found.append(f"setting `{name}` does not exist")
        for word in code.split():
            path = word.strip("`'\",;:()[]")
            if not _PATH.match(path) or any(c in path for c in "<>{}") or path.startswith(".stack/"):
                continue
            if not (any(root.glob(path)) if "*" in path else (root / path).exists()):
                found.append(f"file `{path}` does not exist")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_target_setting_and_file_a_doc_names_exists(doc: Path) -> None:
    assert false_claims(doc.read_text()) == []


def test_a_planted_false_claim_of_each_kind_is_found() -> None:
    planted = (
        "Run `make demo` and `make no-such-target`, with `PIPELINE_SINKS` and `PIPELINE_NO_SUCH_SETTING`,\n"
        "then read `sinks/bigquery.py` and `sinks/no_such_module.py`.\n"
        "```bash\nBIGQUERY_NO_SUCH=1 make test && make bench-nothing\n```\n"
        "| `PIPELINE_RUNNER` | `prism` | right |\n| `PIPELINE_SINKS` | `redis` | wrong |\n"
        "| `PIPELINE_LOCK_TTL_S` | 10 s | right |\n| `LEADERBOARD_METRICS_TTL_S` | 7 days | wrong |\n"
        "| `PIPELINE_IDLE_RESUME_MS` | 50 ms | right |\n| `HTTP_SINK_REQUEST_DEADLINE_S` | 99 | wrong |\n"
    )
    assert sorted(false_claims(planted)) == sorted(
        [
            "make target `no-such-target` is not in the Makefile",
            "make target `bench-nothing` is not in the Makefile",
            "setting `PIPELINE_NO_SUCH_SETTING` does not exist",
            "setting `BIGQUERY_NO_SUCH` does not exist",
            "file `sinks/no_such_module.py` does not exist",
            "setting `PIPELINE_SINKS` defaults to 'redis,bigquery,http', not `redis`",
            "setting `LEADERBOARD_METRICS_TTL_S` defaults to 0, not 7 days",
            "setting `HTTP_SINK_REQUEST_DEADLINE_S` defaults to 15.0, not 99",
        ]
    )


def test_env_example_names_every_setting_of_every_group() -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, re.M))
    assert [choices for choices in EACH_SETTING if not listed.intersection(choices)] == []
