"""Connections to the database file: the one place that sets the SQLite pragmas, one connection
per thread, and the read and write transactions.

Every connection gets WAL, foreign keys, `synchronous=FULL` and a busy timeout, so an acknowledged
submission survives a killed process or a power cut and concurrent writers queue instead of
failing. Every write is one `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError

BUSY_TIMEOUT_SECONDS = 30.0


def connect(path: Path) -> sqlite3.Connection:
    """A new connection to `path` with the store's pragmas; rows come back as sqlite3.Row."""
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing implicit.
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise StoreError(f"{path}: not a usable SQLite database ({err})") from None
    if mode.lower() != "wal":
        raise StoreError(f"{path}: could not switch to WAL journal (got {mode})")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    conn.row_factory = sqlite3.Row
    return conn


class Connections:
    """One connection per thread to one file, all closed together by `close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            with self._lock:
                self._open.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so two writers queue
        on the busy timeout instead of failing halfway with 'database is locked'."""
        conn = self.get()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        conn = self.get()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on a connection of its own, closed afterwards: for a long read
        whose caller may write on this thread's connection meanwhile."""
        conn = connect(self.path)
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()
        self._local = threading.local()
