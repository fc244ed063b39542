"""A real, throwaway PostgreSQL server for tests: initdb + postgres in a temp dir.

`running_postgres()` makes a cluster in a fresh temp dir, starts it on a free loopback port
(its unix socket in the temp dir too, never the system's), and stops it and removes the dir
at the end, also on failure. Password authentication (scram-sha-256) is on for TCP, so the
store's password path is exercised for real.

PostgreSQL refuses to run as root (tests run as root in CI), so as root the server runs as
an unprivileged system user (`postgres`, which Debian's package creates, else `nobody`) and
the temp dir belongs to that user. Binaries: the newest `/usr/lib/postgresql/*/bin`, else
`initdb` on PATH; scripts/lib/setup.sh installs the Debian package `postgresql`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.procs import free_port

__all__ = ["PgServer", "find_pg_bin", "running_postgres"]

SUPERUSER = "meshgate"
_START_TIMEOUT_S = 30


def find_pg_bin() -> Path:
    """The directory holding initdb/pg_ctl/postgres; fails with a hint when missing."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
        "or on PATH; install the Debian package `postgresql` (scripts/test.sh does)"
    )


def _die_with_parent() -> list[str]:
    """A prefix that makes the server get SIGQUIT (immediate shutdown) if the tests die.

    A test run killed outright must not leave a server behind. `setpriv` (util-linux, always
    on Debian) sets it after the switch of user, which would clear it.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "QUIT", "--"] if setpriv else []


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


@dataclass
class PgServer:
    base: Path
    bin_dir: Path
    user: pwd.struct_passwd | None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = 0
    _proc: subprocess.Popen[bytes] | None = None
    _spare: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """A URL without the password (give `password` apart, as the CA config does)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, check=False, capture_output=True, **self._as_user(), **kwargs)

    def _as_user(self) -> dict[str, Any]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        if self.user is None:
            return {"env": env}
        env["HOME"] = str(self.base)
        return {
            "env": env,
            "user": self.user.pw_uid,
            "group": self.user.pw_gid,
            "extra_groups": [],
            "cwd": self.base,
        }

    def initdb(self) -> None:
        self.socket_dir.mkdir()
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user is not None:
            for path in (self.base, self.socket_dir, pwfile):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        done = self._run(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata", str(self.data_dir),
                "--username", SUPERUSER,
                "--pwfile", str(pwfile),
                "--auth-host", "scram-sha-256",
                "--auth-local", "trust",
                "--encoding", "UTF8",
                "--locale", "C",
                "--no-sync",
            ]
        )  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.decode()}")

    def start(self) -> None:
        """Start (or restart) the server; keeps the port it had, picks one the first time.

        A no-op while it runs, so a test's cleanup can always call it.
        """
        if self._proc is not None and self._proc.poll() is None:
            return
        for _attempt in range(3):
            port = self.port or free_port()
            log = self.log_path.open("ab")
            argv = [
                str(self.bin_dir / "postgres"),
                "-D", str(self.data_dir),
                "-p", str(port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.socket_dir}",
                # Throwaway data: durability buys nothing and costs seconds.
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
                "-c", "shared_buffers=16MB",
            ]  # fmt: skip
            self._proc = subprocess.Popen(
                [*_die_with_parent(), *argv], stdout=log, stderr=log, **self._as_user()
            )
            log.close()
            if self._wait_ready(port):
                self.port = port
                return
            self._kill()
            if self.port:  # a restart must keep its port; do not wander
                break
        raise RuntimeError(f"postgres did not start; log:\n{self._log_tail()}")

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(
                    host=str(self.socket_dir), port=port, user=SUPERUSER, dbname="postgres"
                ):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, as in a real outage."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection over the unix socket (autocommit)."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
        )

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; returns its name."""
        name = name or f"t_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def fresh_database(self) -> str:
        """An empty database: a reset spare one, else a new one (CREATE DATABASE costs ~0.5 s)."""
        return self._spare.pop() if self._spare else self.create_database()

    def release_database(self, name: str) -> None:
        """Empty `name` (every session ended, every schema dropped) and keep it for reuse."""
        try:
            with self.admin() as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
            with psycopg.connect(
                host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=name
            ) as conn:
                conn.execute(_EMPTY_DATABASE)
        except psycopg.Error:
            self.drop_database(name)
            return
        self._spare.append(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# Drops every non-system schema with all it holds, then gives back an empty `public`.
_EMPTY_DATABASE = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT nspname FROM pg_namespace
        WHERE left(nspname, 3) <> 'pg_' AND nspname <> 'information_schema'
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', name);
    END LOOP;
    CREATE SCHEMA public AUTHORIZATION pg_database_owner;
END
$$"""


@contextlib.contextmanager
def running_postgres() -> Iterator[PgServer]:
    """A started server in a fresh temp dir; stopped and removed at the end, even on failure."""
    bin_dir = find_pg_bin()
    user = _run_as()
    # Not under pytest's tmp dir: that is 0700 root, which the server's user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="meshgate-pg-"))
    server = PgServer(base=base, bin_dir=bin_dir, user=user)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
