"""The sockets the project's processes listen on, and which of them other hosts can reach.

Every listener the project opens binds a configured host, loopback by default: ``exposed`` is the
rule (pure, unit-tested on made-up sockets), ``listeners`` reads the real sockets of a set of
process trees with psutil (the stack's services from their pid files, the pipeline's supervisor,
Prism and job process).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, order=True)
class Listener:
    port: int
    host: str
    kind: str  # "tcp" or "udp"
    pid: int
    process: str  # the program and its first arguments, to name it in a failure

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port} (pid {self.pid}: {self.process})"


def is_loopback(host: str) -> bool:
    """Whether only this host can reach an address: 127.0.0.0/8 or ::1 (also as ::ffff:127.x).
    The wildcards 0.0.0.0 and :: are every interface, so not loopback."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def exposed(sockets: Iterable[Listener]) -> list[Listener]:
    """The listeners another host could reach (bound to anything but a loopback address), sorted."""
    return sorted(s for s in sockets if not is_loopback(s.host))


def process_trees(pids: Iterable[int]) -> list[psutil.Process]:
    """Each live process of ``pids`` and all of its descendants, once each."""
    found: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                found.setdefault(process.pid, process)
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def listeners(processes: Iterable[psutil.Process]) -> list[Listener]:
    """The listening TCP sockets and bound UDP sockets of ``processes``."""
    result = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
            name = " ".join(process.cmdline()[:3])[:120] or process.name()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in connections:
            tcp_listen = conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN
            udp_bound = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if tcp_listen or udp_bound:
                kind = "tcp" if tcp_listen else "udp"
                result.add(Listener(conn.laddr.port, conn.laddr.ip, kind, process.pid, name))
    return sorted(result)
