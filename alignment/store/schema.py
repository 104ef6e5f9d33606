"""The database schema: tables, views and the append-only triggers, versioned with
`PRAGMA user_version` and upgraded in place by `MIGRATIONS`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .errors import StoreError

SCHEMA_VERSION = 1


def _append_only(table: str) -> list[str]:
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: add a new row instead'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: nothing saved is deleted'); END",
    ]


# Each migration takes the schema from version i to i + 1 and runs in one transaction.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE prompts (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            messages TEXT NOT NULL CHECK (json_valid(messages)),
            source TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            position INTEGER NOT NULL CHECK (position >= 0),
            text TEXT NOT NULL,
            num_tokens INTEGER,
            finish_reason TEXT,
            model TEXT NOT NULL,
            adapter TEXT,
            settings TEXT NOT NULL CHECK (json_valid(settings)),
            seed INTEGER,
            created_at REAL NOT NULL,
            UNIQUE (prompt_id, position)
        )""",
        """CREATE TABLE annotators (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('annotator', 'admin')),
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE assignments (
            id INTEGER PRIMARY KEY,
            token TEXT NOT NULL UNIQUE,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            closed_at REAL,
            outcome TEXT CHECK (outcome IN ('ranked', 'skipped', 'released'))
        )""",
        "CREATE INDEX assignments_open ON assignments (prompt_id, closed_at, expires_at)",
        "CREATE INDEX assignments_annotator ON assignments (annotator_id, closed_at)",
        """CREATE TABLE rankings (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            assignment_id INTEGER REFERENCES assignments(id),
            supersedes INTEGER UNIQUE REFERENCES rankings(id),
            tie INTEGER NOT NULL CHECK (tie IN (0, 1)),
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX rankings_prompt ON rankings (prompt_id, annotator_id)",
        "CREATE INDEX rankings_annotator ON rankings (annotator_id, created_at)",
        """CREATE TABLE ranking_items (
            ranking_id INTEGER NOT NULL REFERENCES rankings(id),
            candidate_id INTEGER NOT NULL REFERENCES candidates(id),
            rank INTEGER NOT NULL CHECK (rank >= 1),
            PRIMARY KEY (ranking_id, candidate_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE skips (
            id INTEGER PRIMARY KEY,
            prompt_id INTEGER NOT NULL REFERENCES prompts(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            assignment_id INTEGER REFERENCES assignments(id),
            reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX skips_prompt ON skips (prompt_id, annotator_id)",
        """CREATE TABLE retractions (
            id INTEGER PRIMARY KEY,
            ranking_id INTEGER UNIQUE REFERENCES rankings(id),
            skip_id INTEGER UNIQUE REFERENCES skips(id),
            annotator_id INTEGER NOT NULL REFERENCES annotators(id),
            created_at REAL NOT NULL,
            CHECK ((ranking_id IS NULL) <> (skip_id IS NULL))
        )""",
        """CREATE VIEW current_rankings AS
            SELECT r.* FROM rankings r
            WHERE NOT EXISTS (SELECT 1 FROM rankings s WHERE s.supersedes = r.id)
              AND NOT EXISTS (SELECT 1 FROM retractions x WHERE x.ranking_id = r.id)""",
        """CREATE VIEW current_skips AS
            SELECT s.* FROM skips s
            WHERE NOT EXISTS (SELECT 1 FROM retractions x WHERE x.skip_id = s.id)""",
        *[
            statement
            for table in ("prompts", "candidates", "rankings", "ranking_items", "skips")
            for statement in _append_only(table)
        ],
        *_append_only("retractions"),
    ],
]


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file up to the newest schema; run inside one write transaction. `path` is only
    for error messages."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: schema version {version} is newer than this program knows "
            f"({len(MIGRATIONS)}); upgrade the alignment package"
        )
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        if tables.fetchone()[0]:
            raise StoreError(
                f"{path}: an SQLite database that is not a ranking store "
                "(it has tables but no schema version)"
            )
    for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in statements:
            conn.execute(statement)
        # user_version is part of the same transaction: a crash mid-migration leaves the old
        # version and the old schema, never a half-upgraded file.
        conn.execute(f"PRAGMA user_version = {target}")
