"""`Store`, the ranking database as callers use it: each public method is one transaction (or
one snapshot) over the concern modules, with the time taken from the store's clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sqlalchemy import RowMapping
from sqlalchemy.exc import DataError

# Whole modules, so calls name their concern (`leasing.next_lease`).
from . import leasing, prompts, queries, sessions, submissions
from .annotators import annotator_id, annotator_role, sync_annotators
from .connection import Database
from .errors import StoreError
from .records import AnnotatorProgress, Lease, NewCandidate, StoredRanking, StoredSkip, Undone
from .schema import migrate, schema_version

Ranks = Sequence[int | None]  # one rank per answer, in the annotator's display order


class Store:
    """A ranking database: an SQLite file path, or a PostgreSQL URL
    (`postgresql://user@host/dbname`). Safe to share between threads and between processes."""

    def __init__(self, target: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.database = Database(target)
        self.path = self.database.path  # the SQLite file; None on PostgreSQL
        self.name = self.database.name  # for messages: the path, or the URL without password
        with self.database.write() as conn:
            migrate(conn, self.name)
            # The database's random secret, the same for every process on it (made on first use).
            self._secret = sessions.database_secret(conn)

    def close(self) -> None:
        self.database.close()

    def schema_version(self) -> int:
        with self.database.read() as conn:
            return schema_version(conn)

    def integrity_check(self) -> str:
        """SQLite's own check of the file ('ok' when sound)."""
        if self.database.dialect != "sqlite":
            raise StoreError(f"{self.name}: integrity_check is SQLite's; PostgreSQL has none")
        with self.database.read() as conn:
            return conn.exec_driver_sql("PRAGMA integrity_check").scalar_one()

    # -- prompts, candidates and annotators --------------------------------------------------

    def sampled_keys(self) -> set[str]:
        """Keys of prompts that already have candidates (so `align sample` can skip them)."""
        with self.database.read() as conn:
            return prompts.sampled_keys(conn)

    def prompts_from(self, source: str) -> int:
        """How many prompts came from `source` (e.g. AB_EVALUATION)."""
        with self.database.read() as conn:
            return prompts.prompts_from(conn, source)

    def add_sampled(
        self,
        messages: list[dict[str, str]],
        candidates: Sequence[NewCandidate],
        source: str | None = None,
    ) -> int | None:
        """Store a prompt and its candidates in one transaction; None if it already has some."""
        now = self.clock()
        try:
            with self.database.write() as conn:
                return prompts.add_sampled(conn, messages, candidates, source, now)
        except DataError as err:
            if "NUL" not in str(err.orig):
                raise
            raise StoreError(
                f"{self.name}: PostgreSQL cannot store the NUL character (\\x00) that this "
                f"prompt or one of its answers holds (source {source}); use an SQLite file"
            ) from None

    def candidates(self, prompt_id: int) -> list[RowMapping]:
        """Every stored column of a prompt's candidates, in sampling order."""
        with self.database.read() as conn:
            return prompts.candidates(conn, prompt_id)

    def max_candidates(self) -> int:
        with self.database.read() as conn:
            return prompts.max_candidates(conn)

    def sync_annotators(self, annotators: Sequence[tuple[str, str]]) -> None:
        """Make sure every (name, role) from the annotators file has a row; roles follow the file."""
        now = self.clock()
        with self.database.write() as conn:
            sync_annotators(conn, annotators, now)

    def role(self, name: str) -> str | None:
        with self.database.read() as conn:
            return annotator_role(conn, name)

    # -- leases and submissions --------------------------------------------------------------

    def lease(self, name: str, per_prompt: int = 1, lease_seconds: float = 600.0) -> Lease | None:
        """The annotator's open lease (renewed), else a new lease on the next prompt they may
        rank; None when their queue is empty."""
        with self.database.write() as conn:
            return leasing.next_lease(conn, name, self.clock(), per_prompt, lease_seconds)

    def submit_ranking(
        self, name: str, token: str, ranks: Ranks, tie: bool = False, per_prompt: int = 1
    ) -> int:
        """Store a full ranking given in the annotator's display order; returns its id."""
        with self.database.write() as conn:
            return submissions.submit_ranking(
                conn, name, token, ranks, tie, per_prompt, self.clock()
            )

    def submit_and_next(
        self,
        name: str,
        token: str,
        ranks: Ranks,
        tie: bool = False,
        per_prompt: int = 1,
        lease_seconds: float = 600.0,
    ) -> tuple[int, Lease | None]:
        """submit_ranking, then the next lease, in one transaction (one disk sync, not two)."""
        with self.database.write() as conn:
            now = self.clock()
            ranking_id = submissions.submit_ranking(conn, name, token, ranks, tie, per_prompt, now)
            return ranking_id, leasing.next_lease(conn, name, now, per_prompt, lease_seconds)

    def skip(self, name: str, token: str, reason: str, per_prompt: int = 1) -> int:
        """Record "can't rank this" with a reason; the prompt leaves this annotator's queue."""
        with self.database.write() as conn:
            return submissions.skip(conn, name, token, reason, per_prompt, self.clock())

    def skip_and_next(
        self, name: str, token: str, reason: str, per_prompt: int = 1, lease_seconds: float = 600.0
    ) -> tuple[int, Lease | None]:
        """skip, then the next lease, in one transaction."""
        with self.database.write() as conn:
            now = self.clock()
            skip_id = submissions.skip(conn, name, token, reason, per_prompt, now)
            return skip_id, leasing.next_lease(conn, name, now, per_prompt, lease_seconds)

    def release(self, name: str, token: str) -> None:
        """Give a leased prompt back to the queue (nothing was submitted)."""
        with self.database.write() as conn:
            submissions.release(conn, name, token, self.clock())

    def release_all(self, name: str) -> None:
        """Give back every prompt leased to the annotator (at sign-out)."""
        with self.database.write() as conn:
            leasing.release_open(conn, annotator_id(conn, name), self.clock())

    def undo(self, name: str, lease_seconds: float = 600.0) -> Undone | None:
        """Retract the annotator's latest current ranking or skip and lease that prompt back to
        them, with the retracted ranks to start from. Nothing is deleted."""
        now = self.clock()
        with self.database.write() as conn:
            return submissions.undo(conn, name, now, lease_seconds)

    # -- reading -----------------------------------------------------------------------------

    def progress(self, name: str, per_prompt: int = 1, since: float = 0.0) -> tuple[int, int]:
        """(submissions since `since`, prompts left in this annotator's queue)."""
        now = self.clock()
        with self.database.read() as conn:
            return queries.progress(conn, name, now, per_prompt, since)

    def annotator_progress(self, since: float = 0.0) -> list[AnnotatorProgress]:
        with self.database.read() as conn:
            return queries.annotator_progress(conn, since)

    def counts(self) -> dict[str, int]:
        with self.database.read() as conn:
            return queries.counts(conn)

    def current_rankings(self, min_annotators: int = 1) -> Iterator[StoredRanking]:
        """Every current ranking (in id order) of prompts ranked by at least `min_annotators`
        distinct annotators, items best first (ties in sampling order)."""
        # A connection of its own for as long as it iterates: the caller may write meanwhile.
        with self.database.read() as conn:
            yield from queries.current_rankings(conn, min_annotators)

    def current_skips(self) -> Iterator[StoredSkip]:
        """Every current skip (in id order), with its reason."""
        with self.database.read() as conn:
            yield from queries.current_skips(conn)

    # -- the ranking app's sessions ----------------------------------------------------------

    def session_hash(self, token: str) -> str:
        """How a session's cookie token is stored: a keyed hash, never the token itself."""
        return sessions.token_hash(self._secret, token)

    def cookie_name_suffix(self) -> str:
        """A name for the app's session cookie, the same for every process on this database and
        different for another database (whose app may run on the same host)."""
        return sessions.token_hash(self._secret, "cookie")[:32]

    def open_session(self, hashed: str, name: str) -> None:
        with self.database.write() as conn:
            sessions.open_session(conn, hashed, name, self.clock())

    def session_name(self, hashed: str) -> str | None:
        """Who is signed in with the session stored as `hashed`; None for no such session or
        one older than `sessions.SESSION_DAYS`."""
        oldest = self.clock() - sessions.SESSION_DAYS * 86_400
        with self.database.read() as conn:
            return sessions.session_name(conn, hashed, oldest)

    def end_session(self, hashed: str) -> None:
        with self.database.write() as conn:
            sessions.end_session(conn, hashed)

    def sessions(self) -> dict[str, str]:
        """{token hash: name} of every open session."""
        with self.database.read() as conn:
            return sessions.all_sessions(conn)
