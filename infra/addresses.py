"""``host:port`` strings for a listener and for its clients on this machine.

Apart from ``pipeline.runners`` because the pipeline's supervisor needs them too, and must not
import Apache Beam: it is a small process that lives as long as the job (docs/benchmarks.md,
"Memory").
"""

from __future__ import annotations

import ipaddress


def connect_host(host: str) -> str:
    """The host a client on this machine connects to for a listener bound to ``host``: the host
    itself, or ``127.0.0.1`` for a wildcard (every interface, loopback included)."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = not host
    return "127.0.0.1" if unspecified else host


def address(host: str, port: int) -> str:
    """``host:port`` for a gRPC client of a listener bound to ``host`` (IPv6 in brackets)."""
    host = connect_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_address(host: str, port: int) -> str:
    """``host:port`` for a gRPC server to listen on (an empty host: every interface)."""
    host = host or "::"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
