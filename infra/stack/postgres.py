"""PostgreSQL as a native process: its own cluster, port and sockets, provisioned for CDC.

The cluster is created once with ``initdb`` (password auth on TCP, peer auth on the socket, no
``trust`` anywhere), started in the foreground under our supervisor with the logical-replication
settings on the command line, and provisioned idempotently: an application role that owns the
tables, a CDC role with REPLICATION and SELECT on the two captured tables only (plus UPDATE on the
one-row heartbeat table), a monitoring role with ``pg_monitor`` and no table access (``make
status``), the schema from ``infra/sql`` (every script idempotent, applied in name order on every
start: ``002_row_bound.sql`` adds the row size bound to an existing database), and a publication we
create ourselves so the CDC role needs no table ownership.

Client authentication is our own ``pg_hba.conf`` (``hba_rules``, written on every start), not
initdb's: the CDC role may connect to the application database only, and no role may open a
physical replication connection (``pg_basebackup`` would copy every table of the cluster). Logical
replication, which is what Debezium opens, names its database and so matches the database lines.

Secure mode (``STACK_SECURE``, a ``TlsFiles`` given): ``ssl=on`` with the stack's server certificate
(a copy of it and its key in the cluster's folder, owned by the server's OS user, which Postgres
requires of its key), and every TCP line of ``pg_hba.conf`` is ``hostssl``: a client that does not
use TLS matches no line and is refused. Clients verify the server (``POSTGRES_SSLMODE``
``verify-full`` against ``ca.pem``, ``PostgresSettings.conninfo``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from infra.capture_health import read_slot
from infra.process import ServiceProcess, StackError, port_open
from infra.settings import CdcSettings, PostgresSettings
from infra.stack.certificates import TlsFiles

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
CAPTURED_TABLES = ("content", "engagement_events")
HEARTBEAT_TABLE = "cdc_heartbeat"
OS_USER = "postgres"
# Where clients may connect from over TCP: the loopback, as initdb's defaults.
LOOPBACK_NETS = ("127.0.0.1/32", "::1/128")
_log = logging.getLogger(__name__)


def _log_warning(notice: psycopg.errors.Diagnostic) -> None:
    if notice.severity_nonlocalized == "WARNING":
        _log.warning("postgres: %s", notice.message_primary)


def pg_bin(tool: str) -> str:
    """Debian keeps the server binaries out of PATH; find the newest installed major version."""
    found = shutil.which(tool)
    if found:
        return found
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / tool).exists()), reverse=True) if root.exists() else []
    if not versions:
        raise StackError(f"PostgreSQL's {tool} was not found. Run `make bootstrap` (installs the Debian package).")
    return str(versions[0] / tool)


def _run_as_postgres() -> str | None:
    # Postgres refuses to run as root; as any other user it simply runs as that user.
    return OS_USER if os.geteuid() == 0 else None


def _reachable_by(user: str, path: Path) -> bool:
    result = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "test", "-x", str(path)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def hba_rules(settings: PostgresSettings, *, connection_type: str = "host") -> str:
    """The server's ``pg_hba.conf``: first match wins. Peer auth on the socket (the supervisor's
    OS user); SCRAM over TCP from the loopback; the CDC role only to the application database.
    No line names the ``replication`` keyword, so physical replication is refused to everyone."""
    lines = [
        "# Written by infra/stack/postgres.py on every start: edits here are lost.",
        "local all all peer",
    ]
    # Quoted, so a role or database named like a keyword ("all", "replication") is taken literally.
    db, cdc = f'"{settings.db}"', f'"{settings.cdc_user}"'
    for net in LOOPBACK_NETS:
        lines.append(f"{connection_type} {db} {cdc} {net} scram-sha-256")
    lines.append(f"host all {cdc} all reject")
    for net in LOOPBACK_NETS:
        lines.append(f"{connection_type} all all {net} scram-sha-256")
    return "\n".join(lines) + "\n"


def cluster_root(stack_dir: Path) -> Path:
    """Where the cluster lives: under the stack folder, unless the ``postgres`` OS user cannot reach
    it (a checkout under /root, say); then in a folder of its own under /var/tmp, named after the
    stack folder so that each checkout keeps its own cluster."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    owner = _run_as_postgres()
    if owner is None or _reachable_by(owner, stack_dir):
        return stack_dir / "postgres"
    digest = hashlib.sha1(str(stack_dir.resolve()).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp") / f"engagement-pipeline-{digest}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    return fallback / "postgres"


class Postgres:
    def __init__(
        self, settings: PostgresSettings, cdc: CdcSettings, stack_dir: Path, tls: TlsFiles | None = None
    ) -> None:
        self.settings = settings
        self.cdc = cdc
        self.root = cluster_root(stack_dir)
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.hba_file = self.root / "pg_hba.conf"
        self._stack_dir = stack_dir
        self.tls = tls
        # The server's copy of the certificate and key (module doc).
        self.server_tls = TlsFiles(self.root / "tls")

    @functools.cached_property
    def process(self) -> ServiceProcess:
        """Built on first use: ``provision`` against someone else's Postgres (Docker Compose) needs no
        local binaries."""
        settings = self.settings
        return ServiceProcess.in_stack(
            self._stack_dir,
            "postgres",
            command=[
                pg_bin("postgres"),
                "-D",
                str(self.data),
                "-c",
                f"port={settings.port}",
                "-c",
                f"listen_addresses={settings.host}",
                "-c",
                f"unix_socket_directories={self.sockets}",
                "-c",
                f"hba_file={self.hba_file}",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=16",
                "-c",
                "max_wal_senders=16",
                # A forgotten slot must not fill a laptop's disk: past this it is invalidated, loudly.
                "-c",
                "max_slot_wal_keep_size=4GB",
                "-c",
                "password_encryption=scram-sha-256",
                "-c",
                "log_min_messages=warning",
                *self._tls_options(),
            ],
            ready=self.ready,
            host=settings.host,
            port=settings.port,
            user=_run_as_postgres(),
            # SIGINT is Postgres' "fast" shutdown; SIGTERM ("smart") waits for every client to leave.
            stop_signal=signal.SIGINT,
        )

    def _tls_options(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "-c",
            "ssl=on",
            "-c",
            f"ssl_cert_file={self.server_tls.server_cert}",
            "-c",
            f"ssl_key_file={self.server_tls.server_key}",
            "-c",
            "ssl_min_protocol_version=TLSv1.2",
        ]

    # --- lifecycle ---------------------------------------------------------------------------
    def write_hba(self) -> None:
        """``hba_rules`` into the file the server reads (on every start, so it follows the settings)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.hba_file.write_text(hba_rules(self.settings, connection_type="host" if self.tls is None else "hostssl"))
        self.hba_file.chmod(0o644)

    def write_tls(self) -> None:
        """Copy the server certificate and key where the server reads them, owned by its OS user
        (Postgres refuses a key that another user owns, or that others can read)."""
        if self.tls is None:
            return
        folder = self.server_tls.dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = _run_as_postgres()
        entry = pwd.getpwnam(owner) if owner else None
        for source, target, mode in (
            (self.tls.server_cert, self.server_tls.server_cert, 0o644),
            (self.tls.server_key, self.server_tls.server_key, 0o600),
        ):
            shutil.copyfile(source, target)
            target.chmod(mode)
            if entry:
                os.chown(target, entry.pw_uid, entry.pw_gid)
        folder.chmod(0o700)
        if entry:
            os.chown(folder, entry.pw_uid, entry.pw_gid)

    def ensure_cluster(self) -> bool:
        """initdb once; return True if a new cluster was created. Writes ``pg_hba.conf`` (and in
        secure mode the server's certificate and key) every time."""
        self.write_hba()
        self.write_tls()
        if (self.data / "PG_VERSION").exists():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / ".initdb-pw"
        pwfile.write_text(self.settings.superuser_password.get_secret_value() + "\n")
        pwfile.chmod(0o600)
        owner = _run_as_postgres()
        if owner:
            entry = pwd.getpwnam(owner)
            for path in (self.root, self.sockets, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        command = [
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            self.settings.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        if owner:
            command = ["setpriv", f"--reuid={owner}", f"--regid={owner}", "--init-groups", *command]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            hint = ""
            if "Permission denied" in result.stderr:
                hint = f"\nThe {owner} user must be able to traverse every parent folder of {self.data}."
            raise StackError(f"initdb failed:\n{result.stderr.strip()}{hint}")
        return True

    def ready(self) -> bool:
        if not port_open(self.settings.host, self.settings.port):
            return False
        try:
            with psycopg.connect(self.settings.conninfo(superuser=True, dbname="postgres")) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    # --- provisioning ------------------------------------------------------------------------
    def provision(self) -> None:
        """Roles, database, schema, grants and publication; safe to run on every start."""
        s = self.settings
        with psycopg.connect(s.conninfo(superuser=True, dbname="postgres"), autocommit=True) as conn:
            self._ensure_role(conn, s.user, s.password.get_secret_value(), replication=False)
            self._ensure_role(conn, s.cdc_user, s.cdc_password.get_secret_value(), replication=True)
            self._ensure_role(conn, s.monitor_user, s.monitor_password.get_secret_value(), replication=False)
            # Slots, pg_stat_replication's lag columns and the WAL position; no table, no write.
            conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(s.monitor_user)))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (s.db,)).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(s.db), sql.Identifier(s.user))
                )
        # The schema is created by the application role so that it owns the tables.
        with psycopg.connect(s.conninfo()) as conn:
            # 002_row_bound.sql warns (and keeps going) when old rows break a new size bound.
            conn.add_notice_handler(_log_warning)
            for script in sorted(SQL_DIR.glob("*.sql")):
                conn.execute(script.read_text())
        with psycopg.connect(s.conninfo(superuser=True), autocommit=True) as conn:
            cdc = sql.Identifier(s.cdc_user)
            db = sql.Identifier(s.db)
            # Only the project's roles connect to its database (PUBLIC has CONNECT by default).
            conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
            for role in (s.user, s.cdc_user, s.monitor_user):
                conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(cdc))
            # Debezium's snapshot reads the captured tables; nothing else (no ALL TABLES, no default
            # privileges: a table added later is not readable by the CDC role until granted here).
            tables = sql.SQL(", ").join(sql.Identifier(t) for t in CAPTURED_TABLES)
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, cdc))
            # heartbeat.action.query: UPDATE ... SET beat_at WHERE id = 1 reads id and writes beat_at.
            heartbeat = sql.Identifier(HEARTBEAT_TABLE)
            conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(heartbeat, cdc))
            conn.execute(sql.SQL("GRANT SELECT (id), UPDATE (beat_at) ON {} TO {}").format(heartbeat, cdc))
            self._ensure_publication(conn)

    @staticmethod
    def _ensure_role(conn: psycopg.Connection, name: str, password: str, *, replication: bool) -> None:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        # ALTER on every start keeps the password in step with the environment.
        conn.execute(
            sql.SQL("{} ROLE {} WITH LOGIN {} PASSWORD {}").format(
                sql.SQL(verb),
                sql.Identifier(name),
                sql.SQL("REPLICATION" if replication else "NOREPLICATION"),
                sql.Literal(password),
            )
        )

    def _ensure_publication(self, conn: psycopg.Connection) -> None:
        name = sql.Identifier(self.cdc.publication_name)
        tables = sql.SQL(", ").join(sql.Identifier(t) for t in (*CAPTURED_TABLES, HEARTBEAT_TABLE))
        exists = conn.execute(
            "SELECT 1 FROM pg_publication WHERE pubname = %s", (self.cdc.publication_name,)
        ).fetchone()
        verb = sql.SQL("ALTER PUBLICATION {} SET TABLE {}") if exists else sql.SQL("CREATE PUBLICATION {} FOR TABLE {}")
        conn.execute(verb.format(name, tables))

    # --- replication slot --------------------------------------------------------------------
    def slot_status(self) -> dict[str, object] | None:
        """The slot's state and lag (``infra.capture_health.read_slot``)."""
        return read_slot(self.settings.conninfo(monitor=True), self.cdc.slot_name)

    def drop_slot(self) -> bool:
        """Drop the slot (after the connector is gone); return True if one was dropped."""
        with psycopg.connect(self.settings.conninfo(superuser=True), autocommit=True) as conn:
            row = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.cdc.slot_name,)
            ).fetchone()
            if row is None:
                return False
            if row[0] is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            conn.execute("SELECT pg_drop_replication_slot(%s)", (self.cdc.slot_name,))
            return True
