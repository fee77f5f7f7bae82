"""Redis as a native process with its own port, data folder and password.

AOF persistence with an fsync per write (`appendfsync always`) so a restart, or a crash, keeps the
leaderboards and the offsets stored with them; ``noeviction`` so a full
Redis fails writes loudly instead of silently evicting leaderboard keys. The password is in the
generated config file (mode 0600), not on the command line where ``ps`` would show it.

Secure mode (``STACK_SECURE``, a ``TlsFiles`` given): no plain port at all (``port 0``), TLS on
``REDIS_PORT`` with the stack's server certificate (clients verify it against ``ca.pem`` and the
host name; a client certificate is checked when one is offered, ``tls-auth-clients optional``, since
the ACL passwords authenticate), and named ACL users instead of the password of the default user,
which is off:

- ``REDIS_USERNAME`` (``engagement-pipeline``, password ``REDIS_PASSWORD``): the sinks, the
  supervisor, the instance lock, rebuild and replay. ``PIPELINE_COMMANDS`` on ``pipeline_key_patterns``:
  no FLUSHALL, CONFIG, KEYS, DEBUG, MODULE, SHUTDOWN, no other key.
- ``REDIS_READER_USERNAME`` (``engagement-reader``): ``make status``, the dashboard and the stack's own
  probe. ``READER_COMMANDS`` only, on the same keys.

Passwords are written as SHA-256 hashes (``#<hex>``), so the config file holds none in clear text.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import redis

from infra.process import ServiceProcess, StackError, port_open
from infra.settings import RedisSettings
from infra.stack.certificates import TlsFiles

# Reads of the project's own checks (loadtest/truth.py, the operations tests), which use these users too.
_INSPECTION = ("zrange", "zcard", "ttl", "type", "hlen", "hvals")
# What the pipeline's Redis code runs: redis-py's Script (EVALSHA, then SCRIPT LOAD on a cold cache, EVAL
# for one-off scripts), the commands its Lua scripts call (they run with the caller's ACL), and the
# Python side's own (sinks/redis_*.py, sinks/leaderboard_view.py, sinks/fencing.py, sinks/http_breaker.py,
# pipeline/instance_lock.py, pipeline/supervisor.py, pipeline/rebuild.py, pipeline/replay.py).
# Not CLIENT SETINFO, which redis-py sends on connecting: Redis 7.0 has no such subcommand (an ACL
# naming it stops the server from starting), and redis-py ignores its refusal.
PIPELINE_COMMANDS = (
    *("eval", "evalsha", "script|load", "script|exists"),
    *("get", "set", "del", "unlink", "exists", "expire", "expireat", "pexpire", "persist", "pttl", "rename"),
    *("hget", "hgetall", "hset", "hsetnx", "hdel", "hincrby", "hincrbyfloat"),
    *("zadd", "zincrby", "zrem", "zremrangebyscore", "zscore", "zunionstore", "zrevrange"),
    *("scan", "time", "ping", "multi", "exec", "discard"),
    *_INSPECTION,
)
# pipeline/status/read.py, pipeline/dashboard/reader.py, sinks/http_breaker.py's BreakerBoard.read.
READER_COMMANDS = ("get", "pttl", "exists", "hget", "hgetall", "zrevrange", "zscore", "scan", "ping", *_INSPECTION)
# Every key the sinks write (sinks/redis_keys.py) under the live prefix, a rebuild's copies under
# <prefix>rebuild:<id>:, the instance lock and fencing keys (engagement:pipeline:*), the HTTP breakers'.
_KEY_ROOTS = ("engagement:", "top_engagement:", "content:", "rebuild:")
# The empty name too: an unfenced sink (tests, benchmarks, a job run without the supervisor) passes
# '' as its fence key to positions.lua, which then reads no fence (sinks/fencing.py, lua_args).
_UNPREFIXED_KEYS = ("engagement:*", "http_breaker:*", "")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise StackError("redis-server was not found. Run `make bootstrap` (installs the Debian package).")
    return found


def client(settings: RedisSettings, *, decode_responses: bool = False) -> redis.Redis:
    return settings.client(decode_responses=decode_responses)


def pipeline_key_patterns(key_prefix: str) -> list[str]:
    """The ACL key patterns of the pipeline's user: the sinks' key roots under the live prefix (and
    without one, where the instance lock lives). A prefix has no glob characters (``RedisSettings``)."""
    prefixes = dict.fromkeys(["", key_prefix])
    patterns = [f"{prefix}{root}*" for prefix in prefixes for root in _KEY_ROOTS]
    return list(dict.fromkeys([*patterns, *_UNPREFIXED_KEYS]))


def acl_lines(settings: RedisSettings) -> list[str]:
    """``user`` directives: the default user off, the pipeline's and the reader's users (module doc)."""

    def user(name: str, password: str, commands: tuple[str, ...]) -> str:
        digest = hashlib.sha256(password.encode()).hexdigest()
        keys = " ".join(f"~{pattern}" for pattern in pipeline_key_patterns(settings.key_prefix))
        grants = " ".join(f"+{command}" for command in commands)
        return f"user {name} reset on #{digest} resetchannels {keys} -@all {grants}"

    pipeline_user = settings.effective_username or "engagement-pipeline"
    if pipeline_user == settings.reader_username:
        raise StackError("REDIS_USERNAME and REDIS_READER_USERNAME must differ")
    return [
        "user default reset off",
        user(pipeline_user, settings.password.get_secret_value(), PIPELINE_COMMANDS),
        user(settings.reader_username, settings.reader_password.get_secret_value(), READER_COMMANDS),
    ]


class RedisServer:
    def __init__(self, settings: RedisSettings, stack_dir: Path, tls: TlsFiles | None = None) -> None:
        self.settings = settings
        self.root = stack_dir / "redis"
        self.conf = self.root / "redis.conf"
        self._stack_dir = stack_dir
        self.tls = tls

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
        if self.tls is None:
            listener = [f"port {s.port}", f"requirepass {s.password.get_secret_value()}"]
        else:
            listener = [
                "port 0",
                f"tls-port {s.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca_cert}",
                "tls-auth-clients optional",
                'tls-protocols "TLSv1.2 TLSv1.3"',
                *acl_lines(s),
            ]
        self.conf.write_text(
            "\n".join(
                [
                    f"bind {s.host}",
                    *listener,
                    "protected-mode yes",
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
            return bool(self.settings.client(reader=True).ping())
        except redis.RedisError:
            return False
