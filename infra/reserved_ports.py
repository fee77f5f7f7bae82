"""The stack's ports kept from Linux's ephemeral ports (``ip_local_reserved_ports``), and the
``a-b,c`` notation of integer sets the kernel's list uses (``make status`` lists partitions in it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def parse_ranges(text: str) -> set[int]:
    """``"58073,59092-59093"`` -> ``{58073, 59092, 59093}``."""
    ports: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if part:
            first, _, last = part.partition("-")
            ports.update(range(int(first), int(last or first) + 1))
    return ports


def format_ranges(ports: Iterable[int]) -> str:
    """``[59094, 58073, 59092, 59093]`` -> ``"58073,59092-59094"``."""
    runs: list[list[int]] = []
    for port in sorted(set(ports)):
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def reserve_ports(ports: Iterable[int], path: Path = RESERVED_PORTS) -> bool:
    """Keep Linux from giving ``ports`` to outgoing connections (``ip_local_reserved_ports``).

    The stack's ports are in the kernel's ephemeral range (32768-60999), so a client socket of any
    process could hold one as its local port, or leave it in TIME_WAIT for a minute after closing;
    a service starting then fails to bind it (EADDRINUSE: seen with Kafka's port in a CI run).
    Reserved ports are still free to listen on. Adds to what is reserved, never removes; needs
    root (False otherwise, or off Linux: the start then only risks that rare failure)."""
    try:
        have = parse_ranges(path.read_text())
        wanted = have | {p for p in ports if p > 0}
        if wanted != have:
            path.write_text(format_ranges(wanted) + "\n")
    except (OSError, ValueError):
        return False
    return True
