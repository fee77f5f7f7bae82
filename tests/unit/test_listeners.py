"""The rule of tests/integration/test_listeners.py on made-up sockets: every listener bound to
anything but a loopback address is reported, loopback ones never are."""

from __future__ import annotations

from tests.integration.listeners import Listener, exposed, is_loopback


def listener(host: str, port: int = 58073, kind: str = "tcp") -> Listener:
    return Listener(port, host, kind, 1234, "prism --job_port=58073")


def test_wildcards_and_routable_addresses_are_exposed():
    sockets = [
        listener("127.0.0.1", 55432),
        listener("::1", 56379),
        listener("127.0.0.11", 58150),  # a Flink worker pool's own loopback address
        listener("::ffff:127.0.0.1", 59092),
        listener("0.0.0.0", 58073),
        listener("::", 41847),
        listener("10.0.0.5", 58081),
        listener("::ffff:10.0.0.5", 58082),
        listener("fe80::1%eth0", 58083),
        listener("0.0.0.0", 5353, "udp"),
    ]
    assert {(s.host, s.port) for s in exposed(sockets)} == {
        ("0.0.0.0", 5353),
        ("::", 41847),
        ("0.0.0.0", 58073),
        ("10.0.0.5", 58081),
        ("::ffff:10.0.0.5", 58082),
        ("fe80::1%eth0", 58083),
    }


def test_only_loopback_is_quiet():
    assert exposed([listener("127.0.0.1"), listener("::1"), listener("127.255.255.254")]) == []


def test_a_name_is_not_taken_for_loopback():
    assert not is_loopback("localhost")
    assert not is_loopback("")
    assert str(listener("::", 41847)) == "tcp [::]:41847 (pid 1234: prism --job_port=58073)"
