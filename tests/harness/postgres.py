"""A throwaway PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a temporary directory and starts
``postgres`` on 127.0.0.1 and a free port (its unix socket in the same
directory), with durability turned off (``fsync=off``): the tests need a real
PostgreSQL (its locking, ``SELECT ... FOR UPDATE SKIP LOCKED``, its
transactions), not a durable one. PostgreSQL refuses to run as root: as root
the cluster belongs to the ``postgres`` user that Debian's package creates.
Debian puts the binaries in ``/usr/lib/postgresql/<version>/bin``, not on PATH.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .server import free_port

__all__ = ["PostgresNotInstalled", "PostgresServer", "find_postgres_bindir"]

INSTALL_HINT = (
    "PostgreSQL is not installed (no initdb on PATH nor in /usr/lib/postgresql/*/bin). "
    "On Debian or Ubuntu, as root: apt-get update && apt-get install -y postgresql "
    "(or run `nox -s tests`, which installs it when it can)."
)


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries were found, or they cannot run here."""


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parent.parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def find_postgres_bindir() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: ``$PG_BINDIR``, Debian's newest, or PATH."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return Path(explicit) if (Path(explicit) / "initdb").exists() else None
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class PostgresServer:
    """A PostgreSQL cluster of its own, on 127.0.0.1 and a free port, removed by ``close()``.

    Connect as user ``postgres`` without a password (trust authentication,
    local connections only), to the database ``postgres`` or one you create.
    ``durable=True`` keeps PostgreSQL's own durability settings (the benchmarks).
    """

    def __init__(self, port: int | None = None, *, durable: bool = False) -> None:
        bindir = find_postgres_bindir()
        if bindir is None and os.environ.get("PG_BINDIR"):
            raise PostgresNotInstalled(f"PG_BINDIR={os.environ['PG_BINDIR']} has no initdb")
        if bindir is None:
            raise PostgresNotInstalled(INSTALL_HINT)
        self.bindir = bindir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresNotInstalled(
                    "PostgreSQL refuses to run as root and there is no `postgres` user to run it "
                    "as (Debian's postgresql package creates one: apt-get install -y postgresql)"
                ) from None
            self._run_as = "postgres"
        self._dir = Path(tempfile.mkdtemp(prefix="rb-postgres-"))
        self.data = self._dir / "data"
        self.socket_dir = self._dir
        self.log = self._dir / "postgres.log"
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None

    def _popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, user=self._run_as, cwd=self._dir,
                                start_new_session=True, **kwargs)

    def _initdb(self) -> None:
        proc = self._popen(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
             "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
             "--no-instructions"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}): {out.decode(errors='replace')}")

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if self.running:
            return self
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        settings = ["-c", "max_connections=200", "-c", "shared_buffers=32MB"]
        if not self.durable:
            # A test database: nothing needs to survive a crash of this machine.
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]
        with self.log.open("ab") as log:
            self.process = self._popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.socket_dir), "-c", f"listen_addresses={self.host}", *settings],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}): {self.tail()}")
            if self.ready():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections on port {self.port} within "
                           f"{timeout}s: {self.tail()}")

    def ready(self) -> bool:
        result = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
             "-U", self.user, "-t", "1"], check=False)
        return result.returncode == 0

    def tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def settings(self, name: str = "postgres", **extra: Any) -> dict[str, Any]:
        """A Django ``DATABASES`` entry for database ``name`` of this server."""
        return {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": self.user,
                "PASSWORD": "", "HOST": self.host, "PORT": str(self.port), **extra}

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown: sessions are cut, no checkpoint wait.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self.port} {self.bindir}>"
