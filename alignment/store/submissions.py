"""Submissions: storing a ranking or a skip against a lease, giving a lease back, and undo.

Nothing saved is overwritten: a changed ranking is a new row that `supersedes` the old one, and
undo adds a retraction.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text

from . import queueing
from .annotators import annotator_id
from .errors import LeaseError, SubmissionError
from .leasing import claim, lease_view, open_lease
from .records import Undone
from .rules import check_ranks, display_order


def submit_ranking(
    conn: Connection,
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
    prompt_id, annotator = lease.prompt_id, lease.annotator_id
    ids = (
        conn.execute(
            text("SELECT id FROM candidates WHERE prompt_id = :p ORDER BY position"),
            {"p": prompt_id},
        )
        .scalars()
        .all()
    )
    if len(ids) != len(dense):
        raise SubmissionError(
            f"Incomplete: this prompt has {len(ids)} answers and {len(dense)} ranks were given."
        )
    order = display_order(name, prompt_id, len(ids))
    previous = conn.execute(
        text(
            "SELECT id FROM rankings WHERE prompt_id = :p AND annotator_id = :a "
            "ORDER BY id DESC LIMIT 1"
        ),
        {"p": prompt_id, "a": annotator},
    ).scalar_one_or_none()
    if (
        previous is not None
        and conn.execute(
            text("SELECT 1 FROM current_rankings WHERE id = :r"), {"r": previous}
        ).first()
    ):
        raise LeaseError("Stale lease: you already have a ranking for this prompt.")
    ranking_id = conn.execute(
        text(
            "INSERT INTO rankings (prompt_id, annotator_id, assignment_id, supersedes, tie, "
            "created_at) VALUES (:p, :a, :lease, :previous, :tie, :now) RETURNING id"
        ),
        {
            "p": prompt_id,
            "a": annotator,
            "lease": lease.id,
            "previous": previous,
            "tie": int(len(set(dense)) < len(dense)),
            "now": now,
        },
    ).scalar_one()
    conn.execute(
        text("INSERT INTO ranking_items (ranking_id, candidate_id, rank) VALUES (:r, :c, :rank)"),
        [
            {"r": ranking_id, "c": ids[position], "rank": rank}
            for position, rank in zip(order, dense, strict=True)
        ],
    )
    queueing.ranking_added(conn, annotator, prompt_id)
    close_assignment(conn, lease.id, "ranked", now)
    return ranking_id


def skip(conn: Connection, name: str, token: str, reason: str, per_prompt: int, now: float) -> int:
    """Record "can't rank this" with a reason; the prompt leaves this annotator's queue."""
    reason = (reason or "").strip()
    if not reason:
        raise SubmissionError("Skip needs a reason: pick one or write one.")
    lease = claim(conn, name, token, now, per_prompt)
    skip_id = conn.execute(
        text(
            "INSERT INTO skips (prompt_id, annotator_id, assignment_id, reason, created_at) "
            "VALUES (:p, :a, :lease, :reason, :now) RETURNING id"
        ),
        {
            "p": lease.prompt_id,
            "a": lease.annotator_id,
            "lease": lease.id,
            "reason": reason,
            "now": now,
        },
    ).scalar_one()
    queueing.skip_added(conn, lease.annotator_id, lease.prompt_id)
    close_assignment(conn, lease.id, "skipped", now)
    return skip_id


def close_assignment(conn: Connection, assignment: int, outcome: str, now: float) -> None:
    """Mark a lease done with its outcome ('ranked' or 'skipped')."""
    conn.execute(
        text("UPDATE assignments SET closed_at = :now, outcome = :outcome WHERE id = :id"),
        {"now": now, "outcome": outcome, "id": assignment},
    )


def release(conn: Connection, name: str, token: str, now: float) -> None:
    """Give a leased prompt back to the queue (nothing was submitted)."""
    conn.execute(
        text(
            "UPDATE assignments SET closed_at = :now, outcome = 'released' "
            "WHERE token = :token AND annotator_id = :a AND closed_at IS NULL"
        ),
        {"now": now, "token": token, "a": annotator_id(conn, name)},
    )


def undo(conn: Connection, name: str, now: float, lease_seconds: float) -> Undone | None:
    """Retract the annotator's latest current ranking or skip and lease that prompt back to
    them, with the retracted ranks to start from. Nothing is deleted."""
    annotator = annotator_id(conn, name)
    # One read per table, each walking its (annotator, created_at) index back from the newest
    # row, so it costs the same however much the annotator has done (a UNION would sort all).
    ranking, skip = (
        conn.execute(
            text(
                f"SELECT '{kind}' AS kind, id, prompt_id, created_at FROM {view} "
                "WHERE annotator_id = :a ORDER BY created_at DESC, id DESC LIMIT 1"
            ),
            {"a": annotator},
        ).first()
        for kind, view in (("ranking", "current_rankings"), ("skip", "current_skips"))
    )
    if ranking is None or skip is None:
        latest = ranking or skip
    else:  # the newer one; at the same time the ranking
        latest = skip if skip.created_at > ranking.created_at else ranking
    if latest is None:
        return None
    column = "ranking_id" if latest.kind == "ranking" else "skip_id"
    conn.execute(
        text(
            f"INSERT INTO retractions ({column}, annotator_id, created_at) VALUES (:row, :a, :now)"
        ),
        {"row": latest.id, "a": annotator, "now": now},
    )
    if latest.kind == "ranking":
        queueing.ranking_retracted(conn, annotator, latest.prompt_id)
    else:
        queueing.skip_retracted(conn, annotator, latest.prompt_id)
    token = open_lease(conn, annotator, latest.prompt_id, now, lease_seconds)
    previous = latest.id if latest.kind == "ranking" else None
    view = lease_view(conn, name, token, latest.prompt_id, previous)
    return Undone(latest.kind, latest.id, latest.prompt_id, view)
