"""The annotators table: who may hold leases and submit, with which role."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from .errors import SubmissionError, UnknownAnnotatorError
from .rules import ROLES


def sync_annotators(
    conn: sqlite3.Connection, annotators: Sequence[tuple[str, str]], now: float
) -> None:
    """Make sure every (name, role) has a row; roles follow what is given."""
    for name, role in annotators:
        if role not in ROLES:
            raise SubmissionError(f"annotator {name!r}: role {role!r} not in {ROLES}")
        conn.execute(
            "INSERT INTO annotators (name, role, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET role = excluded.role",
            (name, role, now),
        )


def annotator_role(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT role FROM annotators WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def annotator_id(conn: sqlite3.Connection, name: str) -> int:
    """The row id behind `name`; refuses a name that is not in the table."""
    row = conn.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise UnknownAnnotatorError(f"Unknown annotator {name!r}: not in the annotators file.")
    return row[0]
