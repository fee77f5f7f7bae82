"""Redis as a native process with its own port, data folder and password.

AOF persistence with an fsync per write (`appendfsync always`) so a restart, or a crash, keeps the
leaderboards and the offsets stored with them; ``noeviction`` so a full
Redis fails writes loudly instead of silently evicting leaderboard keys. The password is in the
generated config file (mode 0600), not on the command line where ``ps`` would show it.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import redis

from infra.process import ServiceProcess, StackError, port_open
from infra.settings import RedisSettings


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise StackError("redis-server was not found. Run `make bootstrap` (installs the Debian package).")
    return found


def client(settings: RedisSettings, *, decode_responses: bool = False) -> redis.Redis:
    return settings.client(decode_responses=decode_responses)


class RedisServer:
    def __init__(self, settings: RedisSettings, stack_dir: Path) -> None:
        self.settings = settings
        self.root = stack_dir / "redis"
        self.conf = self.root / "redis.conf"
        self._stack_dir = stack_dir

    @functools.cached_property
    def process(self) -> ServiceProcess:
        """Built on first use, like ``Postgres.process``: no local binary needed to provision."""
        settings = self.settings
        return ServiceProcess.in_stack(
            self._stack_dir,
            "redis",
            command=[redis_server_binary(), str(self.conf)],
            ready=self.ready,
            host=settings.host,
            port=settings.port,
        )

    def write_config(self) -> None:
        s = self.settings
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf.touch(mode=0o600)
        self.conf.chmod(0o600)
        self.conf.write_text(
            "\n".join(
                [
                    f"bind {s.host}",
                    f"port {s.port}",
                    "protected-mode yes",
                    f"requirepass {s.password.get_secret_value()}",
                    f"dir {self.root}",
                    "daemonize no",
                    'logfile ""',
                    'save ""',
                    "appendonly yes",
                    # Every acknowledged write survives a crash of Redis or of the machine. A lost
                    # tail (or a Redis that comes back from an older copy) stays consistent: offsets
                    # and increments are one script, one AOF entry. The sinks notice the positions
                    # went back and the job is restarted to read the window again
                    # (docs/delivery.md, "A Redis that comes back older"); this makes it rare.
                    "appendfsync always",
                    f"maxmemory {s.maxmemory}",
                    "maxmemory-policy noeviction",
                    "",
                ]
            )
        )

    def ready(self) -> bool:
        if not port_open(self.settings.host, self.settings.port):
            return False
        try:
            return bool(client(self.settings).ping())
        except redis.RedisError:
            return False
