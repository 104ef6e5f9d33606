"""Leasing: which prompt an annotator may rank next, handing it out as a short lease, and checking
the lease a submission comes back with.

An annotator holds at most one open lease, and a prompt is handed out only while its current
rankings plus other annotators' live leases are below N (`per_prompt`), so two people never fill
the same last slot.

The search costs the same however many prompts the store holds, through the queue tables that
triggers keep in every write's transaction (schema migration 2): `queue` has each prompt's number
of current rankings, indexed by it, so prompts that have their N rankings are never looked at;
`queue_done` says which prompts an annotator is done with (a current ranking or skip); and
`queue_cursors` remembers, per annotator and N, below which prompt everything is done or full (but
for the few prompts listed in `queue_reopened` since), so an annotator far ahead of the others
does not step over their own work again at every lease.
"""

from __future__ import annotations

import heapq
import json
import secrets
import sqlite3
from collections.abc import Iterator

from .annotators import annotator_id
from .errors import LeaseError
from .records import Lease
from .rules import display_order

BATCH = 64  # queue rows read per query while searching


def queued(conn: sqlite3.Connection, ranked: int, start: int) -> Iterator[tuple[int, int]]:
    """(prompt, ranked) for the queued prompts with exactly `ranked` current rankings, from prompt
    id `start` on, in id order."""
    while True:
        rows = conn.execute(
            "SELECT prompt_id FROM queue WHERE ranked = ? AND prompt_id >= ? "
            "ORDER BY prompt_id LIMIT ?",
            (ranked, start, BATCH),
        ).fetchall()
        for (prompt_id,) in rows:
            yield prompt_id, ranked
        if len(rows) < BATCH:
            return
        start = rows[-1][0] + 1


def is_done(conn: sqlite3.Connection, annotator: int, prompt_id: int) -> bool:
    """Whether the annotator has a current ranking or skip for the prompt."""
    return (
        conn.execute(
            "SELECT 1 FROM queue_done WHERE annotator_id = ? AND prompt_id = ?",
            (annotator, prompt_id),
        ).fetchone()
        is not None
    )


def has_slot(
    conn: sqlite3.Connection, annotator: int, prompt_id: int, ranked: int, now: float, n: int
) -> bool:
    """Whether a prompt with `ranked` current rankings has room for the annotator: those plus
    other annotators' live leases stay below N."""
    leased = conn.execute(
        "SELECT count(*) FROM assignments WHERE prompt_id = ? AND closed_at IS NULL "
        "AND expires_at > ? AND annotator_id <> ?",
        (prompt_id, now, annotator),
    ).fetchone()[0]
    return ranked + leased < n


def available(
    conn: sqlite3.Connection, annotator: int, prompt_id: int, now: float, per_prompt: int
) -> bool:
    """Whether the annotator (by row id) may be handed `prompt_id` now."""
    row = conn.execute("SELECT ranked FROM queue WHERE prompt_id = ?", (prompt_id,)).fetchone()
    return (
        row is not None
        and not is_done(conn, annotator, prompt_id)
        and has_slot(conn, annotator, prompt_id, row[0], now, per_prompt)
    )


def first_reopened(
    conn: sqlite3.Connection, annotator: int, now: float, per_prompt: int
) -> int | None:
    """The lowest prompt below the annotator's cursor that may have become free again and is;
    entries that are done or have N rankings are dropped (a trigger lists them again if that
    changes)."""
    rows = conn.execute(
        "SELECT o.prompt_id, q.ranked FROM queue_reopened o JOIN queue q USING (prompt_id) "
        "WHERE o.annotator_id = ? AND o.per_prompt = ? ORDER BY o.prompt_id",
        (annotator, per_prompt),
    ).fetchall()
    for prompt_id, ranked in rows:
        if ranked >= per_prompt or is_done(conn, annotator, prompt_id):
            conn.execute(
                "DELETE FROM queue_reopened WHERE annotator_id = ? AND per_prompt = ? "
                "AND prompt_id = ?",
                (annotator, per_prompt, prompt_id),
            )
        elif has_slot(conn, annotator, prompt_id, ranked, now, per_prompt):
            return prompt_id
    return None


def first_available(
    conn: sqlite3.Connection, annotator: int, now: float, per_prompt: int
) -> int | None:
    """The lowest prompt id the annotator may be handed now; moves their cursor on past the
    prompts at its start that they are done with."""
    row = conn.execute(
        "SELECT next_prompt FROM queue_cursors WHERE annotator_id = ? AND per_prompt = ?",
        (annotator, per_prompt),
    ).fetchone()
    if row is None:
        start = 0
    else:
        start = row[0]
        reopened = first_reopened(conn, annotator, now, per_prompt)
        if reopened is not None:  # below the cursor, so lower than anything found past it
            return reopened
    passed, passing = start, True
    found = None
    # Prompts with N rankings or more are in none of these streams.
    for prompt_id, ranked in heapq.merge(*(queued(conn, r, start) for r in range(per_prompt))):
        if is_done(conn, annotator, prompt_id):
            if passing:
                passed = prompt_id + 1
            continue
        passing = False  # from here a prompt may be merely full for now (leased): kept ahead
        if has_slot(conn, annotator, prompt_id, ranked, now, per_prompt):
            found = prompt_id
            break
    if passed > start:
        conn.execute(
            "INSERT INTO queue_cursors (annotator_id, per_prompt, next_prompt) VALUES (?, ?, ?) "
            "ON CONFLICT (annotator_id, per_prompt) DO UPDATE SET next_prompt = excluded.next_prompt",
            (annotator, per_prompt, passed),
        )
    return found


def left_in_queue(conn: sqlite3.Connection, annotator: int, now: float, per_prompt: int) -> int:
    """How many prompts the annotator may be handed now, from the counts the triggers keep: the
    queued prompts below N rankings, less those they are done with, less those other
    annotators' live leases fill."""
    params = {"a": annotator, "n": per_prompt, "now": now}
    below_n = conn.execute(
        "SELECT coalesce(sum(prompts), 0) FROM queue_sizes WHERE ranked < :n", params
    ).fetchone()[0]
    done = conn.execute(
        "SELECT coalesce(sum(prompts), 0) FROM done_sizes WHERE annotator_id = :a AND ranked < :n",
        params,
    ).fetchone()[0]
    full = conn.execute(
        """SELECT count(*) FROM (
               SELECT s.prompt_id FROM assignments s JOIN queue q ON q.prompt_id = s.prompt_id
               WHERE s.closed_at IS NULL AND s.expires_at > :now AND s.annotator_id <> :a
               GROUP BY s.prompt_id HAVING q.ranked < :n AND q.ranked + count(*) >= :n) f
           WHERE NOT EXISTS (SELECT 1 FROM queue_done d
                             WHERE d.annotator_id = :a AND d.prompt_id = f.prompt_id)""",
        params,
    ).fetchone()[0]
    return below_n - done - full


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
    prompt_id = first_available(conn, annotator, now, per_prompt)
    if prompt_id is None:
        return None
    token = open_lease(conn, annotator, prompt_id, now, lease_seconds)
    return lease_view(conn, name, token, prompt_id)


def open_lease(
    conn: sqlite3.Connection, annotator: int, prompt_id: int, now: float, seconds: float
) -> str:
    """Lease `prompt_id` to the annotator (by row id) for `seconds`; returns the lease token."""
    release_open(conn, annotator, now)  # one open lease per annotator: an older one goes back
    token = secrets.token_urlsafe(18)
    conn.execute(
        "INSERT INTO assignments (token, prompt_id, annotator_id, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (token, prompt_id, annotator, now, now + seconds),
    )
    return token


def release_open(conn: sqlite3.Connection, annotator: int, now: float) -> None:
    """Give the annotator's (by row id) open leases, expired or not, back to the queue."""
    conn.execute(
        "UPDATE assignments SET closed_at = ?, outcome = 'released' "
        "WHERE annotator_id = ? AND closed_at IS NULL",
        (now, annotator),
    )


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
        raise LeaseError("Stale lease: this prompt is not assigned to you.")
    if lease["closed_at"] is not None:
        why = {
            "ranked": "you already submitted a ranking for it",
            "skipped": "you already skipped it",
            "released": "it was released (taken back or replaced by a newer one)",
        }[lease["outcome"]]
        raise LeaseError(f"Stale lease: {why}.")
    # Expired: still fine if the slot is free, so slow annotators lose nothing when nobody
    # else needed the prompt meanwhile.
    if lease["expires_at"] <= now and not available(
        conn, annotator, lease["prompt_id"], now, per_prompt
    ):
        raise LeaseError(
            "Stale lease: your time on this prompt ran out and other annotators have "
            "since filled it; this ranking was not saved."
        )
    return lease
