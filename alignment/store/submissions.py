"""Submissions: storing a ranking or a skip against a lease, giving a lease back, and undo.

Nothing saved is overwritten: a changed ranking is a new row that `supersedes` the old one, and
undo adds a retraction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from .annotators import annotator_id
from .errors import LeaseError, SubmissionError
from .leasing import claim, lease_view, open_lease
from .records import Undone
from .rules import check_ranks, display_order


def submit_ranking(
    conn: sqlite3.Connection,
    name: str,
    token: str,
    ranks: Sequence[int | None],
    tie: bool,
    per_prompt: int,
    now: float,
) -> int:
    """Store a full ranking given in the annotator's display order; returns its id."""
    dense = check_ranks(ranks, tie)
    lease = claim(conn, name, token, now, per_prompt)
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
        "SELECT id FROM rankings WHERE prompt_id = ? AND annotator_id = ? ORDER BY id DESC LIMIT 1",
        (prompt_id, annotator),
    ).fetchone()
    if (
        previous is not None
        and conn.execute("SELECT 1 FROM current_rankings WHERE id = ?", (previous[0],)).fetchone()
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
        [(ranking_id, ids[position], rank) for position, rank in zip(order, dense, strict=True)],
    )
    close_assignment(conn, lease["id"], "ranked", now)
    return ranking_id


def skip(
    conn: sqlite3.Connection, name: str, token: str, reason: str, per_prompt: int, now: float
) -> int:
    """Record "can't rank this" with a reason; the prompt leaves this annotator's queue."""
    reason = (reason or "").strip()
    if not reason:
        raise SubmissionError("Skip needs a reason: pick one or write one.")
    lease = claim(conn, name, token, now, per_prompt)
    skip_id = conn.execute(
        "INSERT INTO skips (prompt_id, annotator_id, assignment_id, reason, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (lease["prompt_id"], lease["annotator_id"], lease["id"], reason, now),
    ).lastrowid
    close_assignment(conn, lease["id"], "skipped", now)
    return skip_id


def close_assignment(conn: sqlite3.Connection, assignment: int, outcome: str, now: float) -> None:
    """Mark a lease done with its outcome ('ranked' or 'skipped')."""
    conn.execute(
        "UPDATE assignments SET closed_at = ?, outcome = ? WHERE id = ?", (now, outcome, assignment)
    )


def release(conn: sqlite3.Connection, name: str, token: str, now: float) -> None:
    """Give a leased prompt back to the queue (nothing was submitted)."""
    conn.execute(
        "UPDATE assignments SET closed_at = ?, outcome = 'released' "
        "WHERE token = ? AND annotator_id = ? AND closed_at IS NULL",
        (now, token, annotator_id(conn, name)),
    )


def undo(conn: sqlite3.Connection, name: str, now: float, lease_seconds: float) -> Undone | None:
    """Retract the annotator's latest current ranking or skip and lease that prompt back to
    them, with the retracted ranks to start from. Nothing is deleted."""
    annotator = annotator_id(conn, name)
    # One read per table, each walking its (annotator, created_at) index back from the newest
    # row, so it costs the same however much the annotator has done (a UNION would sort all).
    ranking, skip = (
        conn.execute(
            f"SELECT '{kind}' AS kind, id, prompt_id, created_at FROM {view} "
            "WHERE annotator_id = ? ORDER BY created_at DESC, id DESC LIMIT 1",
            (annotator,),
        ).fetchone()
        for kind, view in (("ranking", "current_rankings"), ("skip", "current_skips"))
    )
    if ranking is None or skip is None:
        latest = ranking or skip
    else:  # the newer one; at the same time the ranking
        latest = skip if skip["created_at"] > ranking["created_at"] else ranking
    if latest is None:
        return None
    column = "ranking_id" if latest["kind"] == "ranking" else "skip_id"
    conn.execute(
        f"INSERT INTO retractions ({column}, annotator_id, created_at) VALUES (?, ?, ?)",
        (latest["id"], annotator, now),
    )
    token = open_lease(conn, annotator, latest["prompt_id"], now, lease_seconds)
    previous = latest["id"] if latest["kind"] == "ranking" else None
    view = lease_view(conn, name, token, latest["prompt_id"], previous)
    return Undone(latest["kind"], latest["id"], latest["prompt_id"], view)
