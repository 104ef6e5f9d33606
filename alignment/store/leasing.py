"""Leasing: which prompt an annotator may rank next, handing it out as a short lease, and checking
the lease a submission comes back with.

An annotator holds at most one open lease, and a prompt is handed out only while its current
rankings plus other annotators' live leases are below N (`per_prompt`), so two people never fill
the same last slot.
"""

from __future__ import annotations

import json
import secrets
import sqlite3

from .annotators import annotator_id
from .errors import LeaseError
from .records import Lease
from .rules import display_order

# Prompts `:annotator` may be handed now: not yet ranked or skipped by them, and a slot free.
AVAILABLE = """
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


def next_lease(
    conn: sqlite3.Connection, name: str, now: float, per_prompt: int, lease_seconds: float
) -> Lease | None:
    """The annotator's open lease (renewed), else a new lease on the next prompt they may
    rank; None when their queue is empty."""
    annotator = annotator_id(conn, name)
    row = conn.execute(
        "SELECT id, token, prompt_id FROM assignments WHERE annotator_id = ? "
        "AND closed_at IS NULL AND expires_at > ? ORDER BY id DESC LIMIT 1",
        (annotator, now),
    ).fetchone()
    if row is not None:
        conn.execute(
            "UPDATE assignments SET expires_at = ? WHERE id = ?", (now + lease_seconds, row["id"])
        )
        return lease_view(conn, name, row["token"], row["prompt_id"])
    row = conn.execute(
        f"SELECT p.id FROM prompts p WHERE {AVAILABLE} ORDER BY p.id LIMIT 1",
        {"annotator": annotator, "now": now, "per_prompt": per_prompt},
    ).fetchone()
    if row is None:
        return None
    token = open_lease(conn, annotator, row[0], now, lease_seconds)
    return lease_view(conn, name, token, row[0])


def open_lease(
    conn: sqlite3.Connection, annotator: int, prompt_id: int, now: float, seconds: float
) -> str:
    """Lease `prompt_id` to the annotator (by row id) for `seconds`; returns the lease token."""
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


def lease_view(
    conn: sqlite3.Connection, name: str, token: str, prompt_id: int, previous: int | None = None
) -> Lease:
    """The lease as the annotator sees it; with `previous`, that ranking's ranks filled in."""
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
                "SELECT candidate_id, rank FROM ranking_items WHERE ranking_id = ?", (previous,)
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


def claim(
    conn: sqlite3.Connection, name: str, token: str, now: float, per_prompt: int
) -> sqlite3.Row:
    """The open assignment behind `token`, checked to be this annotator's and still valid."""
    annotator = annotator_id(conn, name)
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
    if lease["expires_at"] <= now:
        # Expired: still fine if the slot is free, so slow annotators lose nothing when
        # nobody else needed the prompt meanwhile.
        free = conn.execute(
            f"SELECT 1 FROM prompts p WHERE p.id = :prompt AND {AVAILABLE}",
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
