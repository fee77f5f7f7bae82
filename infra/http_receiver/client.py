"""A synchronous client of the receiver's control port, for tests, benchmarks and the demo.

Synchronous because its callers are pytest tests and scripts that set a fault, run something and
then read the counts; one ``httpx.Client`` so a benchmark polling ``stats`` reuses its connection.
Every non-2xx answer raises ``ReceiverError`` with the receiver's own message (a bad fault field is
named in it), except ``health``, which is a probe and answers False.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class ReceiverError(RuntimeError):
    """The control port answered with a non-2xx status."""

    def __init__(self, method: str, url: str, status_code: int, message: str) -> None:
        super().__init__(f"{method} {url} -> {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class ReceiverClient:
    def __init__(self, control_url: str, *, timeout: float = 10.0) -> None:
        self.control_url = control_url.rstrip("/")
        self._http = httpx.Client(base_url=self.control_url, timeout=timeout)

    def __enter__(self) -> ReceiverClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if not response.is_success:
            try:
                message = str(response.json().get("error", response.text))
            except ValueError:
                message = response.text
            raise ReceiverError(method, str(response.url), response.status_code, message)
        return response.json()

    def health(self) -> bool:
        try:
            response = self._http.get("/healthz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("ok") is True

    def stats(self, since_ms: int | None = None, until_ms: int | None = None) -> dict[str, Any]:
        """Counters, per-endpoint counts and lag of first receipts (lag restricted to the window)."""
        params = {name: value for name, value in (("since_ms", since_ms), ("until_ms", until_ms)) if value is not None}
        return self._call("GET", "/stats", params=params)

    def changes(self, endpoint: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """First-seen changes in arrival order, of one endpoint or of all; the ``last`` newest if given."""
        params: dict[str, Any] = {} if endpoint is None else {"endpoint": endpoint}
        if last is not None:
            params["last"] = last
        return self._call("GET", "/changes", params=params)["changes"]

    def faults(self) -> dict[str, Any]:
        return self._call("GET", "/faults")

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Merge these fault fields into the current ones; returns the faults now in force."""
        return self._call("PUT", "/faults", json=fields)

    def clear_faults(self) -> dict[str, Any]:
        """Every fault back to its default, and the ingest port up."""
        return self._call("DELETE", "/faults")

    def down(self, seconds: float) -> None:
        """Close the ingest port for ``seconds`` from now (replacing an outage in progress)."""
        self.set_faults(down_for_s=seconds)

    def reset(self) -> None:
        """Forget recorded changes and counts; the faults stay."""
        self._call("POST", "/reset")
