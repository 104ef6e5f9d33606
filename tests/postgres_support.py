"""A private, throwaway PostgreSQL server for the tests: `initdb` into a temporary directory, a
unix socket in that directory (no TCP port, nothing shared with a system service), `pg_ctl` to
start and stop it. The binaries come from Debian's `postgresql` package (`.ci/apt-packages.txt`).

Without the binaries (or psycopg) the PostgreSQL variants of the tests are skipped with the
reason, unless ALIGN_REQUIRE_POSTGRES=1 (set by `.ci/run`), where they fail instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SUPERUSER = "postgres"  # the cluster's superuser: the tests connect as it


def server_binaries() -> Path | None:
    """Debian's PostgreSQL bin directory (newest version), or where `initdb` is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version(initdb: str) -> int:
    return int(Path(initdb).parent.parent.name)


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    if server_binaries() is None:
        return "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    return None


def skip_or_fail_without_postgres() -> None:
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("ALIGN_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"ALIGN_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


class Cluster:
    """A running throwaway cluster; `new_database()` gives the URL of a fresh, empty database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory  # holds the data directory and the unix socket

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.directory}"

    def new_database(self) -> str:
        import psycopg

        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server_user(command: list[str]) -> list[str]:
    """initdb refuses to run as root: as root, run the server as the `postgres` user."""
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """initdb, start, yield, stop and remove. The directory is made outside pytest's (mode 0700,
    owned by root) temp tree, so the server user can reach it. The server syncs its writes as
    a real one does (only initdb's files, thrown away with it, are not synced)."""
    binaries = server_binaries()
    assert binaries is not None
    directory = Path(tempfile.mkdtemp(prefix="align-postgres-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, SUPERUSER)
    run = {"check": True, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    try:
        subprocess.run(
            _as_server_user(
                [str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-N"]
            ),
            **run,
        )
        options = f"-c listen_addresses='' -c unix_socket_directories='{directory}'"
        log = str(directory / "server.log")
        pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-l", log, "-o", options]
        subprocess.run(_as_server_user([*pg_ctl, "-w", "-s", "start"]), **run)
        try:
            yield Cluster(directory)
        finally:
            # immediate: no shutdown checkpoint, the cluster is thrown away next.
            subprocess.run(_as_server_user([*pg_ctl, "-m", "immediate", "-w", "stop"]), **run)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"{err.cmd[0]} failed:\n{err.stdout.decode(errors='replace')}") from err
    finally:
        shutil.rmtree(directory, ignore_errors=True)
