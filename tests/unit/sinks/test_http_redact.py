"""No URL credentials in HTTP dead letters, logs or status: sinks/http_redact.py."""

from __future__ import annotations

import httpx
import pytest

from infra.settings import HttpSinkSettings
from sinks.contract import Batch
from sinks.flush import Flusher
from sinks.http_redact import is_credential_name, redact_url, scrub, url_secrets
from sinks.http_routes import everything

from .fakes import Letters
from .http_fakes import Clock, Endpoint, Sleeps, enriched, http_sink


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://api.example.com/v1/events", "https://api.example.com/v1/events"),
        ("http://127.0.0.1:58088/ingest?batch=1", "http://127.0.0.1:58088/ingest?batch=1"),
        ("https://alice:s3cret@api.example.com/x", "https://***@api.example.com/x"),
        ("https://ghp_abcdef@api.example.com:8443/x", "https://***@api.example.com:8443/x"),
        ("https://h/x?token=abc&region=eu", "https://h/x?token=***&region=eu"),
        ("https://h/x?api_key=1&apiKey=2&X-API-KEY=3", "https://h/x?api_key=***&apiKey=***&X-API-KEY=***"),
        (
            "https://b.s3.amazonaws.com/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff00&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/o?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("https://a.blob.core.windows.net/c?sv=2020&sig=Zm9v%3D", "https://a.blob.core.windows.net/c?sv=2020&sig=***"),
        ("https://h/cb#access_token=xyz&state=1", "https://h/cb#access_token=***&state=1"),
        ("https://h/x?password=&flag", "https://h/x?password=&flag"),
        (
            "https://h/x?client_secret=a&Authorization=b&session_id=c",
            "https://h/x?client_secret=***&Authorization=***&session_id=***",
        ),
    ],
)
def test_redact_url(url: str, shown: str):
    assert redact_url(url) == shown


def test_a_url_that_cannot_be_parsed_is_masked_whole():
    assert redact_url("http://[::1/x?token=a") == "***"


@pytest.mark.parametrize(
    "name",
    ["token", "access_token", "AccessToken", "sig", "signature", "x-goog-signature", "pwd", "passwd", "auth", "key"],
)
def test_credential_names(name: str):
    assert is_credential_name(name)


@pytest.mark.parametrize("name", ["region", "batch", "sv", "format", "page", "X-Amz-Expires", "se"])
def test_ordinary_names(name: str):
    assert not is_credential_name(name)


def test_scrub_removes_each_secret_from_a_message_raw_or_decoded():
    url = "https://alice:p%40ss@h/x?token=t0k3n&sig=a%2Bb&region=eu"
    assert set(url_secrets(url)) == {"alice:p%40ss", "alice:p@ss", "p%40ss", "p@ss", "t0k3n", "a%2Bb", "a+b"}
    message = f"ConnectError: cannot reach {url} (sig a+b, password p@ss)"
    assert scrub(message, url) == (
        "ConnectError: cannot reach https://***@h/x?token=***&sig=***&region=eu (sig ***, password ***)"
    )


def test_scrub_leaves_text_alone_when_the_url_has_no_credentials():
    assert scrub("HTTP 500 from api: boom", "https://api.example.com/x?page=2") == "HTTP 500 from api: boom"


# --- where a URL reaches a letter, a reason, a log line or the breaker state ---------------------

SECRET_URL = "https://bob:hunter2@receiver.example/ingest?token=t0k3n&region=eu"
SHOWN_URL = "https://***@receiver.example/ingest?token=***&region=eu"


def secret_sink(*script):
    endpoint = Endpoint(*script)
    settings = HttpSinkSettings(url=SECRET_URL, concurrency=1)
    return endpoint, http_sink(endpoint, settings=settings, route=everything(SECRET_URL)[0])


def assert_clean(text: str | bytes) -> None:
    text = text.decode() if isinstance(text, bytes) else text
    for secret in ("hunter2", "t0k3n", "bob:"):
        assert secret not in text, text


def test_the_letter_of_a_refused_change_carries_the_url_without_credentials():
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text=f"forbidden: {request.url}")

    endpoint, sink = secret_sink(echo)
    clock = Clock()
    letters = Letters()
    flusher = Flusher(sink, letters, ["events"], owns_upstream_letters=True, clock=clock, sleep=Sleeps(clock))
    flusher.load()
    flusher.flush([enriched(5)])
    [letter] = letters.sent
    headers = dict(letter.headers)
    assert headers["dlq.http.url"] == SHOWN_URL.encode()
    assert letter.reason == f"HTTP 403 from default: forbidden: {SHOWN_URL}"
    for value in headers.values():
        assert_clean(value)
    assert str(endpoint.requests[0].url) == SECRET_URL  # the request itself still carries them


def test_a_transport_error_quoting_the_url_is_scrubbed_in_the_retry_and_the_breaker():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url}", request=request)

    _, sink = secret_sink(refuse)
    outcome = sink.write(Batch([enriched(1)], {}, {}))
    assert outcome.retry[0].reason == f"connection error: ConnectError: cannot connect to {SHOWN_URL}"
    assert sink._publisher.last_failure == f"connection error: ConnectError: cannot connect to {SHOWN_URL}"
