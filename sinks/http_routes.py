"""Which changes go to which HTTP endpoint: the routing file (seed 002's declarative filters).

```yaml
endpoints:
  analytics:
    url: ${HTTP_RECEIVER_URL:-http://127.0.0.1:58088}/ingest/analytics
    headers: {Authorization: "Bearer ${HTTP_SINK_ROUTE_ANALYTICS_TOKEN}"}
routes:
  - name: deep-video-completions
    endpoint: analytics
    match:
      op: [c, u, d]
      event_type: [complete]
      content_type: [video, podcast]
      device: [mobile, tv]
      engagement_pct: {gte: 50, lt: 100}
```

A change goes to every endpoint that has at least one rule it matches. A rule matches when every
field it names matches (a list is "any of"; a rule without ``match`` takes everything). Fields
other than ``op`` are tested against the row a change is about: its after-image, the before-image
of a delete, and for an update either image, so an endpoint that received a row also hears of
the update that takes it out of its filter. ``engagement_pct`` thresholds never match a change
whose percentage is unknown (no duration, or content without a length).

``${NAME}`` and ``${NAME:-default}`` in URLs and header values are read from the environment, so
tokens stay out of the file. URLs are expanded when the file is loaded; header values are checked
then, but read again where the sink runs (``EnvHeaders``), so a token in a header never travels in
the job graph: the workers' environment must have it. Only variables named ``HTTP_SINK_ROUTE_*`` and
those listed in ``HTTP_SINK_ROUTES_ENV_ALLOW`` may be read: whoever can edit the file must not be
able to copy another secret of the process (a database password, say) into a request to a host of
their choosing. The file is checked at start, and every error names the rule (or endpoint) and the
field.

With only ``HTTP_SINK_URL`` set, there is one endpoint, ``default``, with one rule that takes
everything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sinks.records import EngagementRow, EnrichedChange

_NAME = re.compile(r"^(?=.{1,40}$)[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")  # one name, one Beam label
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ROUTE_ENV_PREFIX = "HTTP_SINK_ROUTE_"
Op = Literal["c", "r", "u", "d"]


class RoutesError(ValueError):
    """The routing file is unusable; the message names the file, the rule or endpoint, and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Threshold:
        lows = [v for v in (self.gt, self.gte) if v is not None]
        highs = [v for v in (self.lt, self.lte) if v is not None]
        if not lows and not highs:
            raise ValueError("give at least one of gt, gte, lt, lte")
        if (self.gt is not None and self.gte is not None) or (self.lt is not None and self.lte is not None):
            raise ValueError("give gt or gte, and lt or lte, not both")
        inclusive = self.gte is not None and self.lte is not None
        if lows and highs and (lows[0] > highs[0] or (lows[0] == highs[0] and not inclusive)):
            raise ValueError(f"the bounds {lows[0]:g} and {highs[0]:g} admit nothing")
        return self

    def admits(self, value: float | None) -> bool:
        if value is None:
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.gte is None or value >= self.gte)
            and (self.lt is None or value < self.lt)
            and (self.lte is None or value <= self.lte)
        )


class Match(_Strict):
    op: frozenset[Op] | None = None
    event_type: frozenset[str] | None = None
    content_type: frozenset[str] | None = None
    device: frozenset[str] | None = None
    engagement_pct: Threshold | None = None

    @field_validator("op", "event_type", "content_type", "device", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]  # `event_type: complete` reads as a list of one
        if isinstance(value, list) and not value:
            raise ValueError("an empty list matches nothing; leave the field out to match everything")
        return value


class Rule(_Strict):
    name: str = Field(min_length=1)
    endpoint: str
    match: Match = Match()


class Endpoint(_Strict):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    # What a 2xx must carry (HTTP_SINK_ACCEPT when unset; docs/http.md, "What a reply must be").
    accept: Literal["json-ack", "any-2xx"] | None = None


class RoutesFile(_Strict):
    endpoints: dict[str, Endpoint] = Field(min_length=1)
    routes: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> RoutesFile:
        for name in self.endpoints:
            if not _NAME.match(name):
                raise ValueError(
                    f"endpoint {name!r}: names are lower case letters and digits, words joined by single _, up to 40"
                )
        seen: set[str] = set()
        for index, rule in enumerate(self.routes):
            where = f"rule {rule.name!r} (routes[{index}])"
            if rule.name in seen:
                raise ValueError(f"{where}: name: used by an earlier rule")
            seen.add(rule.name)
            if rule.endpoint not in self.endpoints:
                raise ValueError(f"{where}: endpoint: {rule.endpoint!r} is not one of {sorted(self.endpoints)}")
        unused = sorted(set(self.endpoints) - {rule.endpoint for rule in self.routes})
        if unused:
            raise ValueError(f"endpoint {unused[0]!r}: no rule sends it anything")
        return self


class EnvHeaders(Mapping[str, str]):
    """Header values whose ``${NAME}`` are read from the environment of the process that uses them.
    A ``Route`` is pickled into its sink's step; this pickles as the templates, not the values."""

    def __init__(
        self, templates: Mapping[str, str], allowed: Collection[str], where: str, env: Mapping[str, str] | None = None
    ) -> None:
        self._templates = dict(templates)
        self._allowed = frozenset(allowed)
        self._where = where
        self._env = env
        self._values: dict[str, str] | None = None

    def _expanded(self) -> dict[str, str]:
        if self._values is None:
            env = os.environ if self._env is None else self._env
            self._values = {
                key: _expand(value, env, self._allowed, f"{self._where}: headers.{key}")
                for key, value in self._templates.items()
            }
        return self._values

    def __getitem__(self, key: str) -> str:
        return self._expanded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._templates)

    def __len__(self) -> int:
        return len(self._templates)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (EnvHeaders, (self._templates, self._allowed, self._where))


@dataclass(frozen=True)
class Route:
    """One endpoint and the rules that feed it: what ``HttpSink`` needs."""

    endpoint: str
    url: str
    headers: Mapping[str, str]
    rules: tuple[Match, ...]
    accept: str | None = None  # None: HTTP_SINK_ACCEPT

    def wants(self, change: EnrichedChange) -> bool:
        return any(_matches(rule, change) for rule in self.rules)


def _matches(rule: Match, change: EnrichedChange) -> bool:
    if rule.op is not None and change.op not in rule.op:
        return False
    content_type = change.content.content_type if change.content is not None else None
    if change.op == "d":
        return _image_matches(rule, change.before, content_type, change.engagement_pct)
    if _image_matches(rule, change.after, content_type, change.engagement_pct):
        return True
    return change.op == "u" and _image_matches(rule, change.before, *_before_view(change, content_type))


def _image_matches(rule: Match, row: EngagementRow | None, content_type: str | None, pct: float | None) -> bool:
    if row is None:
        return False
    return (
        (rule.event_type is None or row.event_type in rule.event_type)
        and (rule.content_type is None or content_type in rule.content_type)
        and (rule.device is None or row.device in rule.device)
        and (rule.engagement_pct is None or rule.engagement_pct.admits(pct))
    )


def _before_view(change: EnrichedChange, after_content_type: str | None) -> tuple[str | None, float | None]:
    """An update's before-image content type and percentage. The join computed them as its -1
    contribution; an update whose sides net to zero has none, and then the before-image has the
    after-image's content and seconds (``pipeline.metrics.contributions``), so theirs apply."""
    minus = next((c for c in change.contributions if c.sign < 0), None)
    if minus is not None:
        return minus.content_type, minus.pct
    before, after = change.before, change.after
    same_content = before is not None and after is not None and before.content_id == after.content_id
    if same_content and before is not None and before.content_id is not None:
        return after_content_type, change.engagement_pct
    return None, None


def everything(url: str, headers: Mapping[str, str] | None = None) -> list[Route]:
    """``HTTP_SINK_URL`` alone: one endpoint, ``default``, that gets every change."""
    return [Route("default", url, dict(headers or {}), (Match(),))]


def load(path: Path, environ: Mapping[str, str] | None = None, allowed: Collection[str] = ()) -> list[Route]:
    """Read and check a routing file; raise :class:`RoutesError` naming what is wrong. ``${NAME}``
    may name ``HTTP_SINK_ROUTE_*`` or a name in ``allowed`` (``HTTP_SINK_ROUTES_ENV_ALLOW``)."""
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RoutesError(f"routing file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RoutesError(f"routing file {path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RoutesError(f"routing file {path}: expected a mapping with endpoints and routes")
    try:
        parsed = RoutesFile.model_validate(raw)
    except ValidationError as exc:
        raise RoutesError(f"routing file {path}: {_describe(exc, raw)}") from None
    routes = []
    for name, endpoint in parsed.endpoints.items():
        where = f"routing file {path}: endpoint {name!r}"
        url = _expand(endpoint.url, env, allowed, f"{where}: url")
        if not url.startswith(("http://", "https://")) or len(url) < len("http://h"):
            raise RoutesError(f"{where}: url: {url!r} is not an http:// or https:// URL")
        headers = EnvHeaders(endpoint.headers, allowed, where, env)
        dict(headers)  # every variable checked at start
        rules = tuple(rule.match for rule in parsed.routes if rule.endpoint == name)
        routes.append(Route(name, url, headers, rules, endpoint.accept))
    return routes


def may_expand(name: str, allowed: Collection[str]) -> bool:
    return name.startswith(ROUTE_ENV_PREFIX) or name in allowed


def _expand(text: str, env: Mapping[str, str], allowed: Collection[str], where: str) -> str:
    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if not may_expand(name, allowed):
            # Refused even with a default or when unset: the file means the same in every environment.
            raise RoutesError(
                f"{where}: ${{{name}}} may not be read: name it {ROUTE_ENV_PREFIX}... or add it to "
                "HTTP_SINK_ROUTES_ENV_ALLOW"
            )
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            raise RoutesError(f"{where}: ${{{name}}} is not set (use ${{{name}:-default}} for a default)")
        return default

    return _VARIABLE.sub(value, text)


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """The first error, with the rule's name instead of a bare list index."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    where = ""
    if loc[:1] == ["routes"] and len(loc) > 1 and isinstance(loc[1], int):
        index = loc[1]
        rules = raw.get("routes") or []
        name = rules[index].get("name") if index < len(rules) and isinstance(rules[index], dict) else None
        where = f"rule {name!r} (routes[{index}])" if name else f"routes[{index}]"
        loc = loc[2:]
    elif loc[:1] == ["endpoints"] and len(loc) > 1:
        where = f"endpoint {loc[1]!r}"
        loc = loc[2:]
    field = ".".join(str(part) for part in loc if not str(part).startswith("function-"))
    message = error["msg"].removeprefix("Value error, ")
    parts = [part for part in (where, field) if part]
    return f"{': '.join(parts)}: {message}" if parts else message
