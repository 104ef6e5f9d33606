"""`Store`, the ranking database file as callers use it: each public method is one transaction
(or one snapshot) over the concern modules, with the time taken from the store's clock."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

# Whole modules, so calls name their concern (`leasing.next_lease`).
from . import leasing, prompts, queries, submissions
from .annotators import annotator_id, annotator_role, sync_annotators
from .connection import Connections
from .errors import StoreError
from .records import AnnotatorProgress, Lease, NewCandidate, StoredRanking, Undone
from .schema import migrate

Ranks = Sequence[int | None]  # one rank per answer, in the annotator's display order


class Store:
    """A ranking database file. Safe to share between threads and between processes."""

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        if self.path.exists() and self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not a database file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = Connections(self.path)
        with self._write() as conn:
            migrate(conn, self.path)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._connections.write()

    def close(self) -> None:
        self._connections.close()

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    # -- prompts, candidates and annotators --------------------------------------------------

    def sampled_keys(self) -> set[str]:
        """Keys of prompts that already have candidates (so `align sample` can skip them)."""
        return prompts.sampled_keys(self._conn())

    def add_sampled(
        self,
        messages: list[dict[str, str]],
        candidates: Sequence[NewCandidate],
        source: str | None = None,
    ) -> int | None:
        """Store a prompt and its candidates in one transaction; None if it already has some."""
        now = self.clock()
        with self._write() as conn:
            return prompts.add_sampled(conn, messages, candidates, source, now)

    def candidates(self, prompt_id: int) -> list[sqlite3.Row]:
        return prompts.candidates(self._conn(), prompt_id)

    def max_candidates(self) -> int:
        return prompts.max_candidates(self._conn())

    def sync_annotators(self, annotators: Sequence[tuple[str, str]]) -> None:
        """Make sure every (name, role) from the annotators file has a row; roles follow the file."""
        now = self.clock()
        with self._write() as conn:
            sync_annotators(conn, annotators, now)

    def role(self, name: str) -> str | None:
        return annotator_role(self._conn(), name)

    # -- leases and submissions --------------------------------------------------------------

    def lease(self, name: str, per_prompt: int = 1, lease_seconds: float = 600.0) -> Lease | None:
        """The annotator's open lease (renewed), else a new lease on the next prompt they may
        rank; None when their queue is empty."""
        with self._write() as conn:
            return leasing.next_lease(conn, name, self.clock(), per_prompt, lease_seconds)

    def submit_ranking(
        self, name: str, token: str, ranks: Ranks, tie: bool = False, per_prompt: int = 1
    ) -> int:
        """Store a full ranking given in the annotator's display order; returns its id."""
        with self._write() as conn:
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
        with self._write() as conn:
            now = self.clock()
            ranking_id = submissions.submit_ranking(conn, name, token, ranks, tie, per_prompt, now)
            return ranking_id, leasing.next_lease(conn, name, now, per_prompt, lease_seconds)

    def skip(self, name: str, token: str, reason: str, per_prompt: int = 1) -> int:
        """Record "can't rank this" with a reason; the prompt leaves this annotator's queue."""
        with self._write() as conn:
            return submissions.skip(conn, name, token, reason, per_prompt, self.clock())

    def skip_and_next(
        self, name: str, token: str, reason: str, per_prompt: int = 1, lease_seconds: float = 600.0
    ) -> tuple[int, Lease | None]:
        """skip, then the next lease, in one transaction."""
        with self._write() as conn:
            now = self.clock()
            skip_id = submissions.skip(conn, name, token, reason, per_prompt, now)
            return skip_id, leasing.next_lease(conn, name, now, per_prompt, lease_seconds)

    def release(self, name: str, token: str) -> None:
        """Give a leased prompt back to the queue (nothing was submitted)."""
        with self._write() as conn:
            submissions.release(conn, name, token, self.clock())

    def release_all(self, name: str) -> None:
        """Give back every prompt leased to the annotator (at sign-out)."""
        with self._write() as conn:
            leasing.release_open(conn, annotator_id(conn, name), self.clock())

    def undo(self, name: str, lease_seconds: float = 600.0) -> Undone | None:
        """Retract the annotator's latest current ranking or skip and lease that prompt back to
        them, with the retracted ranks to start from. Nothing is deleted."""
        now = self.clock()
        with self._write() as conn:
            return submissions.undo(conn, name, now, lease_seconds)

    # -- reading -----------------------------------------------------------------------------

    def progress(self, name: str, per_prompt: int = 1, since: float = 0.0) -> tuple[int, int]:
        """(submissions since `since`, prompts left in this annotator's queue)."""
        now = self.clock()
        with self._connections.read() as conn:
            return queries.progress(conn, name, now, per_prompt, since)

    def annotator_progress(self, since: float = 0.0) -> list[AnnotatorProgress]:
        return queries.annotator_progress(self._conn(), since)

    def counts(self) -> dict[str, int]:
        return queries.counts(self._conn())

    def current_rankings(self, min_annotators: int = 1) -> Iterator[StoredRanking]:
        """Every current ranking (in id order) of prompts ranked by at least `min_annotators`
        distinct annotators, items best first (ties in sampling order)."""
        # A connection of its own: the caller may write (on this thread) while it iterates.
        with self._connections.snapshot() as conn:
            yield from queries.current_rankings(conn, min_annotators)
