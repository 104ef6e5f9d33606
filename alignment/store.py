"""The ranking store: prompts, sampled candidates, annotators, leases, rankings and skips in SQLite.

Design rules, all enforced by the database itself where it can:
- WAL journal, foreign keys on, every write in one `BEGIN IMMEDIATE` transaction, a busy timeout,
  and `synchronous=FULL`, so an acknowledged submission survives a killed process or a power cut.
- The schema is versioned with `PRAGMA user_version`; `MIGRATIONS` upgrade old files in place.
- Nothing a user saved is overwritten or deleted: prompts, candidates, rankings, skips and
  retractions are append-only (triggers refuse UPDATE and DELETE). A changed ranking is a new row
  that `supersedes` the old one; undo adds a retraction. "Current" rows are the ones neither
  superseded nor retracted (the `current_rankings` and `current_skips` views).
- Assignments are short leases: an annotator holds at most one open lease, and a prompt is handed
  out only while its current rankings plus other annotators' live leases are below N, so two people
  never fill the same last slot.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.errors import AlignmentError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 30.0
ROLES = ("annotator", "admin")


class StoreError(AlignmentError, RuntimeError):
    """The database file cannot be used (newer schema, not a ranking store, corrupt)."""


class SubmissionError(AlignmentError, ValueError):
    """A submission the store refuses; the message is shown to the annotator as is."""


class LeaseError(SubmissionError):
    """The lease a submission refers to is unknown, someone else's, closed, or expired and taken."""


class UnknownAnnotatorError(SubmissionError):
    """A name that is not in the annotators table."""


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


@dataclass(frozen=True)
class NewCandidate:
    """A sampled answer on its way into the store, with everything needed to reproduce it."""

    text: str
    model: str
    settings: dict[str, Any]
    seed: int | None = None
    adapter: str | None = None
    num_tokens: int | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Lease:
    """A prompt handed to one annotator: candidates are in that annotator's display order."""

    token: str
    prompt_id: int
    messages: list[dict[str, str]]
    texts: list[str]  # display order; model, adapter and candidate ids deliberately left out
    expires_at: float
    previous_ranks: list[int] | None = None  # the retracted ranking, after an undo


@dataclass(frozen=True)
class Undone:
    kind: str  # "ranking" or "skip"
    row_id: int
    prompt_id: int
    lease: Lease


@dataclass(frozen=True)
class RankedItem:
    candidate_id: int
    position: int
    text: str
    rank: int


@dataclass
class StoredRanking:
    ranking_id: int
    prompt_id: int
    messages: list[dict[str, str]]
    annotator: str
    created_at: float
    tie: bool
    items: list[RankedItem] = field(default_factory=list)  # best first


@dataclass(frozen=True)
class AnnotatorProgress:
    name: str
    role: str
    rankings: int
    skips: int
    today: int
    last_active: float | None


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """Stable identity of a prompt: the same conversation read twice is sampled once."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def display_order(annotator: str, prompt_id: int, count: int) -> list[int]:
    """Positions in the order this annotator sees them: shuffled, but stable across reloads."""
    seed = hashlib.sha256(f"{annotator}\0{prompt_id}".encode()).digest()
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def letter(index: int) -> str:
    return chr(ord("A") + index)


def check_ranks(ranks: Sequence[int | None], tie_allowed: bool) -> list[int]:
    """Validate ranks given in display order and return them as dense rank groups (1 = best).

    Every answer needs a rank in 1..K; equal ranks are ties and need `tie_allowed`, so a tie is
    always a decision, never a slip. Gaps are closed: [1, 3, 3, 4] is stored as [1, 2, 2, 3].
    """
    k = len(ranks)
    missing = [letter(i) for i, r in enumerate(ranks) if r is None or r == ""]
    if missing:
        raise SubmissionError(
            f"Incomplete: give every answer a rank; {', '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} none."
        )
    values: list[int] = []
    for i, raw in enumerate(ranks):
        try:
            value = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SubmissionError(f"Answer {letter(i)}: rank {raw!r} is not a number.") from None
        if isinstance(raw, float) and raw != value:
            raise SubmissionError(f"Answer {letter(i)}: rank {raw!r} is not a whole number.")
        if not 1 <= value <= k:
            raise SubmissionError(f"Answer {letter(i)}: rank {value} is out of range 1..{k}.")
        values.append(value)
    if len(set(values)) < k and not tie_allowed:
        shared = sorted({v for v in values if values.count(v) > 1})
        names = " and ".join(
            ", ".join(letter(i) for i, v in enumerate(values) if v == r) for r in shared
        )
        raise SubmissionError(
            f"Tie not confirmed: {names} share a rank. Tick 'Allow ties' to submit equal ranks, "
            "or give them different ranks."
        )
    dense = {value: group for group, value in enumerate(sorted(set(values)), start=1)}
    return [dense[v] for v in values]


class Store:
    """A ranking database file. Safe to share between threads and between processes."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections and transactions -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing implicit.
                conn = sqlite3.connect(
                    self.path,
                    timeout=BUSY_TIMEOUT_SECONDS,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.DatabaseError as err:
                raise StoreError(f"{self.path}: not a usable SQLite database ({err})") from None
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: could not switch to WAL journal (got {mode})")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so two writers queue
        on the busy timeout instead of failing halfway with 'database is locked'."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several queries."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this program knows "
                    f"({len(MIGRATIONS)}); upgrade the alignment package"
                )
            if version == 0:
                tables = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                ).fetchone()[0]
                if tables:
                    raise StoreError(
                        f"{self.path}: an SQLite database that is not a ranking store "
                        "(it has tables but no schema version)"
                    )
            for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    conn.execute(statement)
                # user_version is part of the same transaction: a crash mid-migration leaves the
                # old version and the old schema, never a half-upgraded file.
                conn.execute(f"PRAGMA user_version = {target}")

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    # -- prompts and candidates --------------------------------------------------------------

    def sampled_keys(self) -> set[str]:
        """Keys of prompts that already have candidates (so `align sample` can skip them)."""
        rows = self._conn().execute(
            "SELECT key FROM prompts p WHERE EXISTS "
            "(SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)"
        )
        return {row[0] for row in rows}

    def add_sampled(
        self,
        messages: list[dict[str, str]],
        candidates: Sequence[NewCandidate],
        source: str | None = None,
    ) -> int | None:
        """Store a prompt and its candidates in one transaction; None if it already has some."""
        key = prompt_key(messages)
        now = self.clock()
        with self._write() as conn:
            row = conn.execute("SELECT id FROM prompts WHERE key = ?", (key,)).fetchone()
            if row is None:
                prompt_id = conn.execute(
                    "INSERT INTO prompts (key, messages, source, created_at) VALUES (?, ?, ?, ?)",
                    (key, json.dumps(messages, ensure_ascii=False), source, now),
                ).lastrowid
            else:
                prompt_id = row[0]
                if conn.execute(
                    "SELECT 1 FROM candidates WHERE prompt_id = ?", (prompt_id,)
                ).fetchone():
                    return None
            conn.executemany(
                "INSERT INTO candidates (prompt_id, position, text, num_tokens, finish_reason, "
                "model, adapter, settings, seed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        prompt_id,
                        position,
                        c.text,
                        c.num_tokens,
                        c.finish_reason,
                        c.model,
                        c.adapter,
                        json.dumps(c.settings, sort_keys=True),
                        c.seed,
                        now,
                    )
                    for position, c in enumerate(candidates)
                ],
            )
            return prompt_id

    def candidates(self, prompt_id: int) -> list[sqlite3.Row]:
        return (
            self._conn()
            .execute("SELECT * FROM candidates WHERE prompt_id = ? ORDER BY position", (prompt_id,))
            .fetchall()
        )

    def max_candidates(self) -> int:
        row = (
            self._conn()
            .execute("SELECT max(n) FROM (SELECT count(*) AS n FROM candidates GROUP BY prompt_id)")
            .fetchone()
        )
        return row[0] or 0

    def counts(self) -> dict[str, int]:
        conn = self._conn()
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (
                "prompts",
                "candidates",
                "annotators",
                "assignments",
                "rankings",
                "current_rankings",
                "skips",
                "current_skips",
                "retractions",
            )
        }

    # -- annotators --------------------------------------------------------------------------

    def sync_annotators(self, annotators: Sequence[tuple[str, str]]) -> None:
        """Make sure every (name, role) from the annotators file has a row; roles follow the file."""
        now = self.clock()
        with self._write() as conn:
            for name, role in annotators:
                if role not in ROLES:
                    raise SubmissionError(f"annotator {name!r}: role {role!r} not in {ROLES}")
                conn.execute(
                    "INSERT INTO annotators (name, role, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET role = excluded.role",
                    (name, role, now),
                )

    def role(self, name: str) -> str | None:
        row = self._conn().execute("SELECT role FROM annotators WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _annotator_id(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownAnnotatorError(f"Unknown annotator {name!r}: not in the annotators file.")
        return row[0]

    # -- the queue ---------------------------------------------------------------------------

    _AVAILABLE = """
        EXISTS (SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)
        AND NOT EXISTS (SELECT 1 FROM current_rankings r
                        WHERE r.prompt_id = p.id AND r.annotator_id = :annotator)
        AND NOT EXISTS (SELECT 1 FROM current_skips s
                        WHERE s.prompt_id = p.id AND s.annotator_id = :annotator)
        AND (SELECT count(*) FROM current_rankings r WHERE r.prompt_id = p.id)
          + (SELECT count(*) FROM assignments a
             WHERE a.prompt_id = p.id AND a.closed_at IS NULL AND a.expires_at > :now
               AND a.annotator_id <> :annotator) < :per_prompt
    """

    def lease(self, name: str, per_prompt: int = 1, lease_seconds: float = 600.0) -> Lease | None:
        """The annotator's open lease (renewed), else a new lease on the next prompt they may
        rank; None when their queue is empty."""
        with self._write() as conn:
            return self._next_lease(conn, name, per_prompt, lease_seconds)

    def _next_lease(
        self, conn: sqlite3.Connection, name: str, per_prompt: int, lease_seconds: float
    ) -> Lease | None:
        now = self.clock()
        annotator = self._annotator_id(conn, name)
        row = conn.execute(
            "SELECT id, token, prompt_id FROM assignments WHERE annotator_id = ? "
            "AND closed_at IS NULL AND expires_at > ? ORDER BY id DESC LIMIT 1",
            (annotator, now),
        ).fetchone()
        if row is not None:
            conn.execute(
                "UPDATE assignments SET expires_at = ? WHERE id = ?",
                (now + lease_seconds, row["id"]),
            )
            return self._lease_view(conn, name, row["token"], row["prompt_id"], now)
        row = conn.execute(
            f"SELECT p.id FROM prompts p WHERE {self._AVAILABLE} ORDER BY p.id LIMIT 1",
            {"annotator": annotator, "now": now, "per_prompt": per_prompt},
        ).fetchone()
        if row is None:
            return None
        token = self._open_lease(conn, annotator, row[0], now, lease_seconds)
        return self._lease_view(conn, name, token, row[0], now)

    @staticmethod
    def _open_lease(
        conn: sqlite3.Connection, annotator: int, prompt_id: int, now: float, seconds: float
    ) -> str:
        # One open lease per annotator: any older one (an expired one, say) is released.
        conn.execute(
            "UPDATE assignments SET closed_at = ?, outcome = 'released' "
            "WHERE annotator_id = ? AND closed_at IS NULL",
            (now, annotator),
        )
        token = secrets.token_urlsafe(18)
        conn.execute(
            "INSERT INTO assignments (token, prompt_id, annotator_id, created_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (token, prompt_id, annotator, now, now + seconds),
        )
        return token

    def _lease_view(
        self,
        conn: sqlite3.Connection,
        name: str,
        token: str,
        prompt_id: int,
        now: float,
        previous: int | None = None,
    ) -> Lease:
        messages = json.loads(
            conn.execute("SELECT messages FROM prompts WHERE id = ?", (prompt_id,)).fetchone()[0]
        )
        rows = conn.execute(
            "SELECT id, text FROM candidates WHERE prompt_id = ? ORDER BY position", (prompt_id,)
        ).fetchall()
        order = display_order(name, prompt_id, len(rows))
        previous_ranks = None
        if previous is not None:
            ranks = dict(
                conn.execute(
                    "SELECT candidate_id, rank FROM ranking_items WHERE ranking_id = ?",
                    (previous,),
                ).fetchall()
            )
            previous_ranks = [ranks.get(rows[i]["id"]) for i in order]
        expires = conn.execute(
            "SELECT expires_at FROM assignments WHERE token = ?", (token,)
        ).fetchone()[0]
        return Lease(
            token=token,
            prompt_id=prompt_id,
            messages=messages,
            texts=[rows[i]["text"] for i in order],
            expires_at=expires,
            previous_ranks=previous_ranks,
        )

    def _claim(
        self, conn: sqlite3.Connection, name: str, token: str, per_prompt: int
    ) -> sqlite3.Row:
        """The open assignment behind `token`, checked to be this annotator's and still valid."""
        annotator = self._annotator_id(conn, name)
        lease = conn.execute("SELECT * FROM assignments WHERE token = ?", (token,)).fetchone()
        if lease is None or lease["annotator_id"] != annotator:
            raise LeaseError("Stale lease: this prompt is not assigned to you. Load the next one.")
        if lease["closed_at"] is not None:
            why = {
                "ranked": "you already submitted a ranking for it",
                "skipped": "you already skipped it",
                "released": "it was released (taken back or replaced by a newer one)",
            }[lease["outcome"]]
            raise LeaseError(f"Stale lease: {why}. Load the next prompt.")
        now = self.clock()
        if lease["expires_at"] <= now:
            # Expired: still fine if the slot is free, so slow annotators lose nothing when
            # nobody else needed the prompt meanwhile.
            free = conn.execute(
                f"SELECT 1 FROM prompts p WHERE p.id = :prompt AND {self._AVAILABLE}",
                {
                    "prompt": lease["prompt_id"],
                    "annotator": annotator,
                    "now": now,
                    "per_prompt": per_prompt,
                },
            ).fetchone()
            if free is None:
                raise LeaseError(
                    "Stale lease: your time on this prompt ran out and other annotators have "
                    "since filled it; this ranking was not saved. Load the next prompt."
                )
        return lease

    # -- submissions -------------------------------------------------------------------------

    def submit_ranking(
        self,
        name: str,
        token: str,
        ranks: Sequence[int | None],
        tie: bool = False,
        per_prompt: int = 1,
    ) -> int:
        """Store a full ranking given in the annotator's display order; returns its id."""
        with self._write() as conn:
            return self._submit(conn, name, token, ranks, tie, per_prompt)

    def submit_and_next(
        self,
        name: str,
        token: str,
        ranks: Sequence[int | None],
        tie: bool = False,
        per_prompt: int = 1,
        lease_seconds: float = 600.0,
    ) -> tuple[int, Lease | None]:
        """submit_ranking, then the next lease, in one transaction (one disk sync, not two)."""
        with self._write() as conn:
            ranking_id = self._submit(conn, name, token, ranks, tie, per_prompt)
            return ranking_id, self._next_lease(conn, name, per_prompt, lease_seconds)

    def _submit(
        self,
        conn: sqlite3.Connection,
        name: str,
        token: str,
        ranks: Sequence[int | None],
        tie: bool,
        per_prompt: int,
    ) -> int:
        dense = check_ranks(ranks, tie)
        now = self.clock()
        lease = self._claim(conn, name, token, per_prompt)
        prompt_id, annotator = lease["prompt_id"], lease["annotator_id"]
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM candidates WHERE prompt_id = ? ORDER BY position", (prompt_id,)
            )
        ]
        if len(ids) != len(dense):
            raise SubmissionError(
                f"Incomplete: this prompt has {len(ids)} answers and {len(dense)} ranks were given."
            )
        order = display_order(name, prompt_id, len(ids))
        previous = conn.execute(
            "SELECT id FROM rankings WHERE prompt_id = ? AND annotator_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (prompt_id, annotator),
        ).fetchone()
        if (
            previous is not None
            and conn.execute(
                "SELECT 1 FROM current_rankings WHERE id = ?", (previous[0],)
            ).fetchone()
        ):
            raise LeaseError("Stale lease: you already have a ranking for this prompt.")
        ranking_id = conn.execute(
            "INSERT INTO rankings (prompt_id, annotator_id, assignment_id, supersedes, tie, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                prompt_id,
                annotator,
                lease["id"],
                previous[0] if previous else None,
                int(len(set(dense)) < len(dense)),
                now,
            ),
        ).lastrowid
        conn.executemany(
            "INSERT INTO ranking_items (ranking_id, candidate_id, rank) VALUES (?, ?, ?)",
            [
                (ranking_id, ids[position], rank)
                for position, rank in zip(order, dense, strict=True)
            ],
        )
        conn.execute(
            "UPDATE assignments SET closed_at = ?, outcome = 'ranked' WHERE id = ?",
            (now, lease["id"]),
        )
        return ranking_id

    def skip(self, name: str, token: str, reason: str, per_prompt: int = 1) -> int:
        """Record "can't rank this" with a reason; the prompt leaves this annotator's queue."""
        with self._write() as conn:
            return self._skip(conn, name, token, reason, per_prompt)

    def skip_and_next(
        self, name: str, token: str, reason: str, per_prompt: int = 1, lease_seconds: float = 600.0
    ) -> tuple[int, Lease | None]:
        with self._write() as conn:
            skip_id = self._skip(conn, name, token, reason, per_prompt)
            return skip_id, self._next_lease(conn, name, per_prompt, lease_seconds)

    def _skip(
        self, conn: sqlite3.Connection, name: str, token: str, reason: str, per_prompt: int
    ) -> int:
        reason = (reason or "").strip()
        if not reason:
            raise SubmissionError("Skip needs a reason: pick one or write one.")
        now = self.clock()
        lease = self._claim(conn, name, token, per_prompt)
        skip_id = conn.execute(
            "INSERT INTO skips (prompt_id, annotator_id, assignment_id, reason, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (lease["prompt_id"], lease["annotator_id"], lease["id"], reason, now),
        ).lastrowid
        conn.execute(
            "UPDATE assignments SET closed_at = ?, outcome = 'skipped' WHERE id = ?",
            (now, lease["id"]),
        )
        return skip_id

    def release(self, name: str, token: str) -> None:
        """Give a leased prompt back to the queue (nothing was submitted)."""
        with self._write() as conn:
            annotator = self._annotator_id(conn, name)
            conn.execute(
                "UPDATE assignments SET closed_at = ?, outcome = 'released' "
                "WHERE token = ? AND annotator_id = ? AND closed_at IS NULL",
                (self.clock(), token, annotator),
            )

    def undo(self, name: str, lease_seconds: float = 600.0) -> Undone | None:
        """Retract the annotator's latest current ranking or skip and lease that prompt back to
        them, with the retracted ranks to start from. Nothing is deleted."""
        now = self.clock()
        with self._write() as conn:
            annotator = self._annotator_id(conn, name)
            latest = conn.execute(
                "SELECT 'ranking' AS kind, id, prompt_id, created_at FROM current_rankings "
                "WHERE annotator_id = :a UNION ALL "
                "SELECT 'skip', id, prompt_id, created_at FROM current_skips WHERE annotator_id = :a "
                "ORDER BY created_at DESC, kind ASC, id DESC LIMIT 1",
                {"a": annotator},
            ).fetchone()
            if latest is None:
                return None
            column = "ranking_id" if latest["kind"] == "ranking" else "skip_id"
            conn.execute(
                f"INSERT INTO retractions ({column}, annotator_id, created_at) VALUES (?, ?, ?)",
                (latest["id"], annotator, now),
            )
            token = self._open_lease(conn, annotator, latest["prompt_id"], now, lease_seconds)
            previous = latest["id"] if latest["kind"] == "ranking" else None
            view = self._lease_view(conn, name, token, latest["prompt_id"], now, previous)
            return Undone(latest["kind"], latest["id"], latest["prompt_id"], view)

    # -- progress ----------------------------------------------------------------------------

    def progress(self, name: str, per_prompt: int = 1, since: float = 0.0) -> tuple[int, int]:
        """(submissions since `since`, prompts left in this annotator's queue)."""
        now = self.clock()
        with self._read() as conn:
            annotator = self._annotator_id(conn, name)
            done = conn.execute(
                "SELECT (SELECT count(*) FROM current_rankings WHERE annotator_id = :a "
                "AND created_at >= :since) + (SELECT count(*) FROM current_skips "
                "WHERE annotator_id = :a AND created_at >= :since)",
                {"a": annotator, "since": since},
            ).fetchone()[0]
            left = conn.execute(
                f"SELECT count(*) FROM prompts p WHERE {self._AVAILABLE}",
                {"annotator": annotator, "now": now, "per_prompt": per_prompt},
            ).fetchone()[0]
            return done, left

    def annotator_progress(self, since: float = 0.0) -> list[AnnotatorProgress]:
        rows = (
            self._conn()
            .execute(
                """SELECT a.name, a.role,
                 (SELECT count(*) FROM current_rankings r WHERE r.annotator_id = a.id) AS rankings,
                 (SELECT count(*) FROM current_skips s WHERE s.annotator_id = a.id) AS skips,
                 (SELECT count(*) FROM current_rankings r
                  WHERE r.annotator_id = a.id AND r.created_at >= :since)
                 + (SELECT count(*) FROM current_skips s
                    WHERE s.annotator_id = a.id AND s.created_at >= :since) AS today,
                 max(coalesce((SELECT max(created_at) FROM rankings r WHERE r.annotator_id = a.id), 0),
                     coalesce((SELECT max(created_at) FROM skips s WHERE s.annotator_id = a.id), 0))
                   AS last_active
               FROM annotators a ORDER BY a.name""",
                {"since": since},
            )
            .fetchall()
        )
        return [
            AnnotatorProgress(
                r["name"],
                r["role"],
                r["rankings"],
                r["skips"],
                r["today"],
                r["last_active"] or None,
            )
            for r in rows
        ]

    # -- reading rankings back ---------------------------------------------------------------

    def current_rankings(self, min_annotators: int = 1) -> Iterator[StoredRanking]:
        """Every current ranking (in id order) of prompts ranked by at least `min_annotators`
        distinct annotators, items best first (ties in sampling order)."""
        # A connection of its own: the caller may write (on this thread) while it iterates.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("BEGIN")  # one snapshot for the whole export
            rows = conn.execute(
                """WITH eligible AS (
                       SELECT prompt_id FROM current_rankings GROUP BY prompt_id
                       HAVING count(DISTINCT annotator_id) >= :m)
                   SELECT r.id AS ranking_id, r.prompt_id, r.created_at, r.tie, a.name,
                          p.messages, c.id AS candidate_id, c.position, c.text, i.rank
                   FROM current_rankings r
                   JOIN eligible e ON e.prompt_id = r.prompt_id
                   JOIN annotators a ON a.id = r.annotator_id
                   JOIN prompts p ON p.id = r.prompt_id
                   JOIN ranking_items i ON i.ranking_id = r.id
                   JOIN candidates c ON c.id = i.candidate_id
                   ORDER BY r.id, i.rank, c.position""",
                {"m": min_annotators},
            )
            current: StoredRanking | None = None
            messages_cache: dict[int, list[dict[str, str]]] = {}
            for row in rows:
                if current is None or current.ranking_id != row["ranking_id"]:
                    if current is not None:
                        yield current
                    messages = messages_cache.get(row["prompt_id"])
                    if messages is None:
                        messages = messages_cache[row["prompt_id"]] = json.loads(row["messages"])
                    current = StoredRanking(
                        ranking_id=row["ranking_id"],
                        prompt_id=row["prompt_id"],
                        messages=messages,
                        annotator=row["name"],
                        created_at=row["created_at"],
                        tie=bool(row["tie"]),
                    )
                current.items.append(
                    RankedItem(row["candidate_id"], row["position"], row["text"], row["rank"])
                )
            if current is not None:
                yield current
        finally:
            conn.close()
