"""The receiver's two Starlette apps: ingest (what the HTTP sink posts to) and control (faults, counts).

Two apps on two ports, not two route prefixes on one, so that taking the ingest port down (a real
refused connection) leaves the control port answering. Both share one ``Receiver`` in memory.

Ingest applies the faults in a fixed order: the outage, latency, throttling, injected errors, a
hostile reply (a 200 that records nothing: ``hostile_reply``), then the body is parsed (400 if
malformed) and each change is refused (422), recorded (201) or found a duplicate (200), and last a
lost acknowledgement may turn the 200 into a 503 after recording.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from infra.http_receiver.state import FaultError, Outage, Receiver, now_ms, parse_faults

INGEST_PATH = "/ingest/{endpoint}"

# An Idempotency-Key is a Structured Field sf-string (draft-ietf-httpapi-idempotency-key-header,
# RFC 8941): printable ASCII in double quotes, with \" and \\ the only escapes; parameters may follow.
_SF_STRING = re.compile(r'\s*"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"\s*(?:;.*)?')


def has_idempotency_key(value: str | None) -> bool:
    """Whether the header is present and a valid sf-string; a bare token is not a key by the draft."""
    return value is not None and _SF_STRING.fullmatch(value) is not None


def json_response(content: Any, status_code: int = 200) -> Response:
    # orjson, not Starlette's json.dumps: GET /changes can list a million records.
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _error(message: str, status_code: int = 400, **extra: Any) -> Response:
    return json_response({"error": message, **extra}, status_code)


TRICKLE_EVERY_S = 0.25  # "slow": a 200 whose body comes a byte at a time, this far apart
HUGE_BYTES = 256 * 1024 * 1024  # "huge": a 200 with a body this large, made as it is sent
DEEP_LEVELS = 5_000  # "deep": a 200 whose JSON is nested this deep (issue 24's reply)
PROXY_PAGE = "<!DOCTYPE html><html><head><title>Gateway</title></head><body>Please wait...</body></html>"


def hostile_reply(mode: str) -> Response:
    """A 200 that acknowledges nothing; see ``state.HOSTILE``."""
    if mode == "html":
        return HTMLResponse(PROXY_PAGE)
    if mode == "deep":
        return Response(b'{"results":' + b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS + b"}", media_type="application/json")
    if mode == "huge":

        async def huge() -> Any:
            chunk = b" " * 65_536
            yield b'{"results": ['
            for _ in range(HUGE_BYTES // len(chunk)):
                yield chunk
            yield b"]}"

        return StreamingResponse(huge(), media_type="application/json")

    async def slow() -> Any:
        for byte in b'{"results": []' + b" " * 200 + b"}":
            await asyncio.sleep(TRICKLE_EVERY_S)
            yield bytes([byte])

    return StreamingResponse(slow(), media_type="application/json")


def ingest_app(receiver: Receiver, outage: Outage) -> Starlette:
    async def ingest(request: Request) -> Response:
        endpoint: str = request.path_params["endpoint"]
        receiver.arrived(endpoint, has_idempotency_key(request.headers.get("idempotency-key")))
        if outage.is_down():
            # Only in-process (tests) or a request already read when the port closed: the server
            # refuses connections while down.
            receiver.refused_while_down()
            return PlainTextResponse("ingest is down", 503, headers={"Connection": "close"})
        body = await request.body()
        faults = receiver.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if receiver.throttles():
            retry_after = max(1, math.ceil(receiver.faults.retry_after_s))
            return PlainTextResponse("throttled", 429, headers={"Retry-After": str(retry_after)})
        if receiver.fails():
            return PlainTextResponse("injected failure", receiver.faults.error_status)
        mode = receiver.hostile()
        if mode is not None:
            return hostile_reply(mode)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            receiver.bad_request()
            return PlainTextResponse("body is not JSON", 400)
        changes = payload.get("changes") if isinstance(payload, dict) else None
        if not isinstance(changes, list):
            receiver.bad_request()
            return PlainTextResponse('body must be a JSON object with a "changes" list', 400)
        results = receiver.receive(endpoint, changes, now_ms())
        if receiver.loses_ack():
            return PlainTextResponse("injected failure after recording (acknowledgement lost)", 503)
        return json_response({"results": results})

    return Starlette(routes=[Route(INGEST_PATH, ingest, methods=["POST"])])


def _query_ms(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise FaultError(name, f"expected milliseconds since the epoch as an integer, got {value!r}") from None


def control_app(receiver: Receiver, outage: Outage) -> Starlette:
    def faults_view() -> Response:
        return json_response(receiver.faults_view(outage.down_until_ms()))

    async def healthz(_: Request) -> Response:
        return json_response({"ok": True})

    async def get_faults(_: Request) -> Response:
        return faults_view()

    async def put_faults(request: Request) -> Response:
        try:
            values = parse_faults(orjson.loads(await request.body()))
        except orjson.JSONDecodeError:
            return _error("body is not JSON", field="body")
        except FaultError as exc:
            return _error(str(exc), field=exc.field)
        receiver.set_faults(values)
        if "down_for_s" in values:
            outage.down(values["down_for_s"])
        return faults_view()

    async def delete_faults(_: Request) -> Response:
        receiver.clear_faults()
        outage.up()
        return faults_view()

    async def stats(request: Request) -> Response:
        try:
            since_ms, until_ms = _query_ms(request, "since_ms"), _query_ms(request, "until_ms")
        except FaultError as exc:
            return _error(str(exc), field=exc.field)
        return json_response(receiver.stats(since_ms, until_ms))

    async def changes(request: Request) -> Response:
        last = request.query_params.get("last")
        if last is not None and not last.isdigit():
            return _error("last must be a whole number", field="last")
        endpoint = request.query_params.get("endpoint") or None
        return json_response({"changes": receiver.changes(endpoint, None if last is None else int(last))})

    async def reset(_: Request) -> Response:
        receiver.reset()
        return json_response({"ok": True})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/faults", get_faults, methods=["GET"]),
            Route("/faults", put_faults, methods=["PUT"]),
            Route("/faults", delete_faults, methods=["DELETE"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/changes", changes, methods=["GET"]),
            Route("/reset", reset, methods=["POST"]),
        ]
    )
