"""The database schema, one definition for SQLite and PostgreSQL: the tables (SQLAlchemy
`MetaData`, compiled to each dialect's types), created with the views and rules of
`database_rules`; versioned and upgraded in place by `migrate`.

The tables are declared once and SQLAlchemy writes each dialect's DDL (timestamps are `Double`:
float8 on PostgreSQL, where REAL would be float4 and lose seconds on epoch times). The views and
the triggers behind the append-only tables and the rules live in `database_rules`.

Versions: SQLite files keep theirs in `PRAGMA user_version`, PostgreSQL databases in the
`app_settings` row `schema_version`. A new database is created at `CREATED_VERSION` straight from
the declarations below; SQLite files made before that (versions 1 and 2) are upgraded through
`schema_history`; `MIGRATIONS` hold the changes since, for both dialects.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)

from .database_rules import RULES, VIEWS
from .errors import StoreError
from .schema_history import SQLITE_HISTORY

metadata = MetaData()


def _json(column: str) -> list[CheckConstraint]:
    """The column holds valid JSON, checked by each dialect's own function."""
    return [
        CheckConstraint(f"json_valid({column})").ddl_if(dialect="sqlite"),
        CheckConstraint(f"{column}::json IS NOT NULL").ddl_if(dialect="postgresql"),
    ]


def _time(name: str, nullable: bool = False) -> Column:
    return Column(name, Double, nullable=nullable)


Table(
    "prompts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", Text, nullable=False, unique=True),
    Column("messages", Text, nullable=False),
    Column("source", Text),
    _time("created_at"),
    *_json("messages"),
)
Table(
    "candidates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("position", Integer, CheckConstraint("position >= 0"), nullable=False),
    Column("text", Text, nullable=False),
    Column("num_tokens", Integer),
    Column("finish_reason", Text),
    Column("model", Text, nullable=False),
    Column("adapter", Text),
    Column("settings", Text, nullable=False),
    Column("seed", Integer),
    _time("created_at"),
    UniqueConstraint("prompt_id", "position"),
    *_json("settings"),
)
Table(
    "annotators",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("role", Text, CheckConstraint("role IN ('annotator', 'admin')"), nullable=False),
    _time("created_at"),
)
Table(
    "assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token", Text, nullable=False, unique=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    _time("created_at"),
    _time("expires_at"),
    _time("closed_at", nullable=True),
    Column("outcome", Text, CheckConstraint("outcome IN ('ranked', 'skipped', 'released')")),
    Index("assignments_open", "prompt_id", "closed_at", "expires_at"),
    Index("assignments_annotator", "annotator_id", "closed_at"),
    Index("assignments_live", "closed_at", "expires_at"),
)
Table(
    "rankings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("assignment_id", Integer, ForeignKey("assignments.id")),
    Column("supersedes", Integer, ForeignKey("rankings.id"), unique=True),
    Column("tie", Integer, CheckConstraint("tie IN (0, 1)"), nullable=False),
    _time("created_at"),
    Index("rankings_prompt", "prompt_id", "annotator_id"),
    Index("rankings_annotator", "annotator_id", "created_at"),
)
Table(
    "ranking_items",
    metadata,
    Column("ranking_id", Integer, ForeignKey("rankings.id"), nullable=False),
    Column("candidate_id", Integer, ForeignKey("candidates.id"), nullable=False),
    Column("rank", Integer, CheckConstraint("rank >= 1"), nullable=False),
    PrimaryKeyConstraint("ranking_id", "candidate_id"),
    sqlite_with_rowid=False,
)
Table(
    "skips",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("assignment_id", Integer, ForeignKey("assignments.id")),
    Column("reason", Text, CheckConstraint("length(trim(reason)) > 0"), nullable=False),
    _time("created_at"),
    Index("skips_prompt", "prompt_id", "annotator_id"),
    Index("skips_annotator", "annotator_id", "created_at"),
)
Table(
    "retractions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ranking_id", Integer, ForeignKey("rankings.id"), unique=True),
    Column("skip_id", Integer, ForeignKey("skips.id"), unique=True),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    _time("created_at"),
    CheckConstraint("(ranking_id IS NULL) <> (skip_id IS NULL)"),
)
# The queue (kept by `queueing` in the transaction of every write), so handing out the next
# prompt and counting what is left cost the same at a million prompts as at a thousand.
# Every prompt with candidates, with its number of current rankings.
Table(
    "queue",
    metadata,
    Column("prompt_id", Integer, ForeignKey("prompts.id"), primary_key=True, autoincrement=False),
    Column("ranked", Integer, CheckConstraint("ranked >= 0"), nullable=False),
    Index("queue_by_ranked", "ranked", "prompt_id"),
)
# How many queued prompts have each `ranked` count.
Table(
    "queue_sizes",
    metadata,
    Column("ranked", Integer, primary_key=True, autoincrement=False),
    Column("prompts", Integer, CheckConstraint("prompts >= 0"), nullable=False),
)
# (annotator, prompt) for every current ranking or skip: the prompts that annotator is done with.
Table(
    "queue_done",
    metadata,
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("prompt_id", Integer, ForeignKey("queue.prompt_id"), nullable=False),
    PrimaryKeyConstraint("annotator_id", "prompt_id"),
    Index("queue_done_by_prompt", "prompt_id", "annotator_id"),
    sqlite_with_rowid=False,
)
# How many of an annotator's done prompts have each `ranked` count.
Table(
    "done_sizes",
    metadata,
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("ranked", Integer, nullable=False),
    Column("prompts", Integer, CheckConstraint("prompts >= 0"), nullable=False),
    PrimaryKeyConstraint("annotator_id", "ranked"),
    sqlite_with_rowid=False,
)
# Where an annotator's search for a prompt starts, per `per_prompt` (N): every queued prompt
# below `next_prompt` is one they are done with, one with N or more rankings, or one listed in
# queue_reopened (a prompt that may have become free again, rather than moving the cursor back
# over all the work since).
Table(
    "queue_cursors",
    metadata,
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("per_prompt", Integer, CheckConstraint("per_prompt >= 1"), nullable=False),
    Column("next_prompt", Integer, nullable=False),
    PrimaryKeyConstraint("annotator_id", "per_prompt"),
    sqlite_with_rowid=False,
)
Table(
    "queue_reopened",
    metadata,
    Column("annotator_id", Integer, nullable=False),
    Column("per_prompt", Integer, nullable=False),
    Column("prompt_id", Integer, nullable=False),
    PrimaryKeyConstraint("annotator_id", "per_prompt", "prompt_id"),
    ForeignKeyConstraint(
        ["annotator_id", "per_prompt"], ["queue_cursors.annotator_id", "queue_cursors.per_prompt"]
    ),
    sqlite_with_rowid=False,
)
# Signed-in sessions of the ranking app, by a keyed hash of the cookie's token (never the token
# itself), so every app process on the database knows them and a restart keeps them.
Table(
    "sessions",
    metadata,
    Column("token_hash", Text, primary_key=True),
    Column("name", Text, nullable=False),
    _time("created_at"),
)
# Named values of the database as a whole: the schema version (PostgreSQL) and the app's secret.
Table(
    "app_settings",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

CREATED_VERSION = 3  # what `create` makes; SQLite files below it come up through schema_history
# Changes after version 3, for both dialects: each takes the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = []
SCHEMA_VERSION = CREATED_VERSION + len(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    """The schema version of the database `conn` is on; 0 for one without the store's schema."""
    if conn.dialect.name == "sqlite":
        return conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    if not inspect(conn).has_table("app_settings"):
        return 0
    value = conn.execute(
        text("SELECT value FROM app_settings WHERE name = 'schema_version'")
    ).scalar_one_or_none()
    return int(value or 0)


def _set_version(conn: Connection, version: int) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
        return
    conn.execute(
        text(
            "INSERT INTO app_settings (name, value) VALUES ('schema_version', :v) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        ),
        {"v": str(version)},
    )


def create(conn: Connection) -> None:
    """The whole schema at CREATED_VERSION, in an empty database."""
    metadata.create_all(conn)
    for statement in VIEWS + RULES[conn.dialect.name]:
        conn.exec_driver_sql(statement)


def migrate(conn: Connection, name: str) -> None:
    """Bring the database up to the newest schema; run inside one write transaction (so a crash
    mid-migration leaves the old version and the old schema, never a half-upgraded database).
    `name` is only for error messages."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{name}: schema version {version} is newer than this program knows "
            f"({SCHEMA_VERSION}); upgrade the alignment package"
        )
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        if inspect(conn).get_table_names():
            raise StoreError(
                f"{name}: a database that is not a ranking store "
                "(it has tables but no schema version)"
            )
        create(conn)
        version = CREATED_VERSION
    elif version < CREATED_VERSION:  # an SQLite file made before PostgreSQL support
        for statements in SQLITE_HISTORY[version:]:
            for statement in statements:
                conn.exec_driver_sql(statement)
        metadata.create_all(conn)  # the tables added since (checkfirst: the others are there)
        version = CREATED_VERSION
    for statements in MIGRATIONS[version - CREATED_VERSION :]:
        for statement in statements:
            conn.exec_driver_sql(statement)
    _set_version(conn, SCHEMA_VERSION)
