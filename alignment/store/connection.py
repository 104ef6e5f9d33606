"""Connections to the ranking database through one SQLAlchemy engine: an SQLite file (the
embedded default) or a PostgreSQL server (`postgresql://user@host/dbname`). This is the one place
that tells the two apart; every query elsewhere is the same SQL for both.

Writes are serialised, so the leasing rule (a prompt is handed out only while its current
rankings plus other annotators' live leases are below N) holds across threads and processes:
- SQLite: every connection gets WAL, foreign keys, `synchronous=FULL` and a busy timeout, and every
  write is one `BEGIN IMMEDIATE` transaction, which takes the file's single write lock up front;
  concurrent writers queue on the timeout instead of failing halfway. An acknowledged write
  survives a killed process or a power cut.
- PostgreSQL: every write transaction first takes one transaction-scoped advisory lock
  (`pg_advisory_xact_lock`), the same single-writer order across every process on the database;
  it is released at commit or rollback, also when the process holding it dies. Reads run
  without it, at REPEATABLE READ, so a read sees one snapshot as SQLite's read transaction does.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url, text
from sqlalchemy.pool import QueuePool

from .errors import StoreError

SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
WRITE_LOCK_KEY = 0x616C69676E  # "align": the PostgreSQL advisory lock behind every store write
POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_url(target: str | Path) -> bool:
    """Whether `target` names a database by URL (scheme://...) rather than an SQLite file path."""
    return isinstance(target, str) and re.match(r"^[A-Za-z][\w+.-]*://", target) is not None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # isolation_level=None: the driver begins nothing by itself; `write` and `read` say BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"could not switch to WAL journal (got {mode})")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


class Database:
    """The engine behind a `Store`: `write()` and `read()` transactions. `name` says which
    database in messages (the file path, or the URL without its password); `path` is the SQLite
    file, None on PostgreSQL."""

    def __init__(self, target: str | Path) -> None:
        if is_url(target):
            self.path: Path | None = None
            self.engine = self._postgres_engine(str(target))  # sets self.name
        else:
            self.path = Path(target)
            self.name = str(self.path)
            self.engine = self._sqlite_engine(self.path)
        self.dialect = self.engine.dialect.name
        # SQLite's busy handler makes a waiting writer sleep in growing steps (up to 100 ms), so
        # under contention a few writers would wait seconds: this process's writers queue on a
        # lock instead and go in turn (other processes still wait on the busy timeout).
        # PostgreSQL's advisory lock wakes its waiters itself.
        self._writers: AbstractContextManager = (
            threading.RLock() if self.dialect == "sqlite" else nullcontext()
        )
        self._check_reachable()

    def _sqlite_engine(self, path: Path) -> Engine:
        if path.is_dir():
            raise StoreError(f"{path}: is a directory, not a database file")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{path}",
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            poolclass=QueuePool,
            pool_size=8,
            max_overflow=-1,  # as many as threads want: SQLite connections are cheap
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _postgres_engine(self, url: str) -> Engine:
        try:
            parsed = make_url(url)
        except exc.ArgumentError as err:
            raise StoreError(f"{url}: not a database URL ({err})") from None
        self.name = parsed.render_as_string(hide_password=True)
        scheme = parsed.get_backend_name()
        if scheme not in POSTGRES_SCHEMES:
            raise StoreError(
                f"{self.name}: unsupported database '{scheme}'; give an SQLite file path or "
                "postgresql://user@host/dbname"
            )
        try:
            import psycopg  # noqa: F401  (the driver SQLAlchemy loads)
        except ImportError:
            raise StoreError(
                f"{self.name}: PostgreSQL needs the psycopg driver; install it with: "
                "pip install 'alignment[postgres]'"
            ) from None
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            pool_size=10,
            max_overflow=20,
            pool_pre_ping=True,  # a server restart drops pooled connections: reconnect
        )

    def _check_reachable(self) -> None:
        """Open one connection now, so a wrong path or URL fails at start with one line."""
        try:
            with self.engine.connect():
                pass
        except StoreError as err:
            raise StoreError(f"{self.name}: {err}") from None
        except exc.DBAPIError as err:
            self.engine.dispose()
            reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
            if self.dialect == "sqlite":
                raise StoreError(f"{self.name}: not a usable SQLite database ({reason})") from None
            host = self.engine.url.host or self.engine.url.query.get("host") or "localhost"
            raise StoreError(
                f"{self.name}: cannot connect to PostgreSQL at {host} ({reason})"
            ) from None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, serialised with every other store write (module docstring);
        committed when the block ends, rolled back if it raises."""
        with self._writers, self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                conn.rollback()  # nothing to keep: it only read

    def close(self) -> None:
        self.engine.dispose()
