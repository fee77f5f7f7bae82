"""An endpoint's URL as it may be shown: in dead letters, log lines, breaker states, ``make status``.

An endpoint URL can carry credentials: ``https://user:password@host/``, ``?token=...``, a signed
URL's ``sig=`` or ``X-Amz-Signature=``. ``redact_url`` keeps what identifies the endpoint (scheme,
host, port, path, the names of the query parameters) and replaces the userinfo and the value of every
query or fragment parameter whose name looks like a credential with ``***``. ``scrub`` does the same
to any text that may quote the URL (an exception's message), by replacing each secret part of it.

A secret inside the path (a webhook URL whose last segment is the key) cannot be told from an
ordinary path: send those as a header instead (``HTTP_SINK_AUTH_TOKEN``, ``headers:`` in the routing
file), which never reaches a letter (docs/http.md).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# A parameter is a credential when its name, lowercased with separators dropped, contains one of
# these. Broad on purpose: masking a harmless value costs a letter's reader little.
CREDENTIAL_MARKERS = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "sig",
    "auth",
    "credential",
    "session",
    "jwt",
    "bearer",
    "cookie",
    "code",
)
_SEPARATORS = re.compile(r"[^a-z0-9]")


def is_credential_name(name: str) -> bool:
    flat = _SEPARATORS.sub("", unquote(name).lower())
    return any(marker in flat for marker in CREDENTIAL_MARKERS)


def _split_pairs(part: str) -> list[tuple[str, str | None]]:
    pairs: list[tuple[str, str | None]] = []
    for item in part.split("&"):
        name, eq, value = item.partition("=")
        pairs.append((name, value if eq else None))
    return pairs


def _redact_pairs(part: str) -> str:
    out = []
    for name, value in _split_pairs(part):
        if value is None:
            out.append(name)
        else:
            out.append(f"{name}={MASK if value and is_credential_name(name) else value}")
    return "&".join(out)


def _netloc(url: str) -> tuple[str, str]:
    """(userinfo, host[:port]) of ``url``'s authority; userinfo empty when there is none."""
    netloc = urlsplit(url).netloc
    userinfo, at, hostport = netloc.rpartition("@")
    return (userinfo, hostport) if at else ("", netloc)


def redact_url(url: str) -> str:
    """``url`` without its credentials: userinfo and credential-like parameter values become ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # not a URL we can take apart: show nothing of it
    userinfo, hostport = _netloc(url)
    netloc = f"{MASK}@{hostport}" if userinfo else hostport
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_pairs(parts.query), _redact_pairs(parts.fragment)))


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that ``redact_url`` masks, raw and percent-decoded, longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url] if url else []
    found: set[str] = set()
    userinfo, _ = _netloc(url)
    if userinfo:
        # The whole userinfo, and the password alone; a user name alone may be an ordinary word.
        found.add(userinfo)
        found.add(userinfo.partition(":")[2])
    for part in (parts.query, parts.fragment):
        for name, value in _split_pairs(part):
            if value and is_credential_name(name):
                found.add(value)
    found |= {unquote(secret) for secret in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every secret part of ``url`` replaced by ``***`` (for messages that may quote it)."""
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text
