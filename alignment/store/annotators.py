"""The annotators table: who may hold leases and submit, with which role."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

from .errors import SubmissionError, UnknownAnnotatorError
from .rules import ROLES


def sync_annotators(conn: Connection, annotators: Sequence[tuple[str, str]], now: float) -> None:
    """Make sure every (name, role) has a row; roles follow what is given."""
    for name, role in annotators:
        if role not in ROLES:
            raise SubmissionError(f"annotator {name!r}: role {role!r} not in {ROLES}")
        conn.execute(
            text(
                "INSERT INTO annotators (name, role, created_at) VALUES (:name, :role, :now) "
                "ON CONFLICT (name) DO UPDATE SET role = excluded.role"
            ),
            {"name": name, "role": role, "now": now},
        )


def annotator_role(conn: Connection, name: str) -> str | None:
    return conn.execute(
        text("SELECT role FROM annotators WHERE name = :name"), {"name": name}
    ).scalar_one_or_none()


def annotator_id(conn: Connection, name: str) -> int:
    """The row id behind `name`; refuses a name that is not in the table."""
    found = conn.execute(
        text("SELECT id FROM annotators WHERE name = :name"), {"name": name}
    ).scalar_one_or_none()
    if found is None:
        raise UnknownAnnotatorError(f"Unknown annotator {name!r}: not in the annotators file.")
    return found
