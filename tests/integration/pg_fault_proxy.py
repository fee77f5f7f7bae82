"""A TCP proxy in front of the test Postgres that can lose one COMMIT, on either side of the server.

``lose_commit("after_server")`` passes the next COMMIT to the server, waits for its reply (so the
transaction has committed) and closes the client's connection instead of relaying it: the client
sees a connection lost during COMMIT, though the batch is in. ``lose_commit("before_server")``
closes both sides without passing COMMIT on: the server rolls the transaction back. Everything
else is relayed unchanged, so reconnecting through the proxy works as usual.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

# psycopg sends COMMIT as a simple query: 'Q', the length (4 + 7), "COMMIT\0".
COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"
Side = Literal["after_server", "before_server"]


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._armed: Side | None = None
        self._lock = threading.Lock()
        self.fired: list[Side] = []
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_commit(self, side: Side) -> None:
        with self._lock:
            self._armed = side

    def _take(self) -> Side | None:
        with self._lock:
            side, self._armed = self._armed, None
            if side is not None:
                self.fired.append(side)
            return side

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            drop_reply = threading.Event()
            threading.Thread(target=self._to_server, args=(client, server, drop_reply), daemon=True).start()
            threading.Thread(target=self._to_client, args=(server, client, drop_reply), daemon=True).start()

    def _to_server(self, client: socket.socket, server: socket.socket, drop_reply: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                side = self._take() if COMMIT_MESSAGE in data and self._armed else None
                if side == "before_server":
                    break
                if side == "after_server":
                    drop_reply.set()
                server.sendall(data)
        except OSError:
            pass
        _close(client, server)

    @staticmethod
    def _to_client(server: socket.socket, client: socket.socket, drop_reply: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if drop_reply.is_set():
                    break  # the server has answered the COMMIT: it committed; the client never hears
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def close(self) -> None:
        self._closing = True
        self.listener.close()


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
