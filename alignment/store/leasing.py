"""Leasing: which prompt an annotator may rank next, handing it out as a short lease, and checking
the lease a submission comes back with.

An annotator holds at most one open lease, and a prompt is handed out only while its current
rankings plus other annotators' live leases are below N (`per_prompt`), so two people never fill
the same last slot.

The search costs the same however many prompts the store holds, through the queue tables that
`queueing` keeps in every write's transaction: `queue` has each prompt's number
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
from collections.abc import Iterator

from sqlalchemy import Connection, Row, text

from .annotators import annotator_id
from .errors import LeaseError
from .records import Lease
from .rules import display_order

BATCH = 64  # queue rows read per query while searching


def queued(conn: Connection, ranked: int, start: int) -> Iterator[tuple[int, int]]:
    """(prompt, ranked) for the queued prompts with exactly `ranked` current rankings, from prompt
    id `start` on, in id order."""
    while True:
        prompt_ids = (
            conn.execute(
                text(
                    "SELECT prompt_id FROM queue WHERE ranked = :r AND prompt_id >= :start "
                    "ORDER BY prompt_id LIMIT :batch"
                ),
                {"r": ranked, "start": start, "batch": BATCH},
            )
            .scalars()
            .all()
        )
        for prompt_id in prompt_ids:
            yield prompt_id, ranked
        if len(prompt_ids) < BATCH:
            return
        start = prompt_ids[-1] + 1


def is_done(conn: Connection, annotator: int, prompt_id: int) -> bool:
    """Whether the annotator has a current ranking or skip for the prompt."""
    return (
        conn.execute(
            text("SELECT 1 FROM queue_done WHERE annotator_id = :a AND prompt_id = :p"),
            {"a": annotator, "p": prompt_id},
        ).first()
        is not None
    )


def has_slot(
    conn: Connection, annotator: int, prompt_id: int, ranked: int, now: float, n: int
) -> bool:
    """Whether a prompt with `ranked` current rankings has room for the annotator: those plus
    other annotators' live leases stay below N."""
    leased = conn.execute(
        text(
            "SELECT count(*) FROM assignments WHERE prompt_id = :p AND closed_at IS NULL "
            "AND expires_at > :now AND annotator_id <> :a"
        ),
        {"p": prompt_id, "now": now, "a": annotator},
    ).scalar_one()
    return ranked + leased < n


def available(
    conn: Connection, annotator: int, prompt_id: int, now: float, per_prompt: int
) -> bool:
    """Whether the annotator (by row id) may be handed `prompt_id` now."""
    ranked = conn.execute(
        text("SELECT ranked FROM queue WHERE prompt_id = :p"), {"p": prompt_id}
    ).scalar_one_or_none()
    return (
        ranked is not None
        and not is_done(conn, annotator, prompt_id)
        and has_slot(conn, annotator, prompt_id, ranked, now, per_prompt)
    )


def first_reopened(conn: Connection, annotator: int, now: float, per_prompt: int) -> int | None:
    """The lowest prompt below the annotator's cursor that may have become free again and is;
    entries that are done or have N rankings are dropped (`queueing` lists them again if that
    changes)."""
    rows = conn.execute(
        text(
            "SELECT o.prompt_id, q.ranked FROM queue_reopened o "
            "JOIN queue q ON q.prompt_id = o.prompt_id "
            "WHERE o.annotator_id = :a AND o.per_prompt = :n ORDER BY o.prompt_id"
        ),
        {"a": annotator, "n": per_prompt},
    ).all()
    for prompt_id, ranked in rows:
        if ranked >= per_prompt or is_done(conn, annotator, prompt_id):
            conn.execute(
                text(
                    "DELETE FROM queue_reopened WHERE annotator_id = :a AND per_prompt = :n "
                    "AND prompt_id = :p"
                ),
                {"a": annotator, "n": per_prompt, "p": prompt_id},
            )
        elif has_slot(conn, annotator, prompt_id, ranked, now, per_prompt):
            return prompt_id
    return None


def first_available(conn: Connection, annotator: int, now: float, per_prompt: int) -> int | None:
    """The lowest prompt id the annotator may be handed now; moves their cursor on past the
    prompts at its start that they are done with."""
    cursor = conn.execute(
        text("SELECT next_prompt FROM queue_cursors WHERE annotator_id = :a AND per_prompt = :n"),
        {"a": annotator, "n": per_prompt},
    ).scalar_one_or_none()
    if cursor is None:
        start = 0
    else:
        start = cursor
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
            text(
                "INSERT INTO queue_cursors (annotator_id, per_prompt, next_prompt) "
                "VALUES (:a, :n, :next) ON CONFLICT (annotator_id, per_prompt) "
                "DO UPDATE SET next_prompt = excluded.next_prompt"
            ),
            {"a": annotator, "n": per_prompt, "next": passed},
        )
    return found


def left_in_queue(conn: Connection, annotator: int, now: float, per_prompt: int) -> int:
    """How many prompts the annotator may be handed now, from the counts `queueing` keeps: the
    queued prompts below N rankings, less those they are done with, less those other
    annotators' live leases fill."""
    params = {"a": annotator, "n": per_prompt, "now": now}
    # sum() is a NUMERIC on PostgreSQL: int() makes it a plain count on both.
    below_n = conn.execute(
        text("SELECT coalesce(sum(prompts), 0) FROM queue_sizes WHERE ranked < :n"), params
    ).scalar_one()
    done = conn.execute(
        text(
            "SELECT coalesce(sum(prompts), 0) FROM done_sizes "
            "WHERE annotator_id = :a AND ranked < :n"
        ),
        params,
    ).scalar_one()
    # Grouped by the queue's key, so PostgreSQL too may read q.ranked in HAVING.
    full = conn.execute(
        text(
            """SELECT count(*) FROM (
               SELECT q.prompt_id FROM assignments s JOIN queue q ON q.prompt_id = s.prompt_id
               WHERE s.closed_at IS NULL AND s.expires_at > :now AND s.annotator_id <> :a
               GROUP BY q.prompt_id HAVING q.ranked < :n AND q.ranked + count(*) >= :n) f
           WHERE NOT EXISTS (SELECT 1 FROM queue_done d
                             WHERE d.annotator_id = :a AND d.prompt_id = f.prompt_id)"""
        ),
        params,
    ).scalar_one()
    return int(below_n) - int(done) - full


def next_lease(
    conn: Connection, name: str, now: float, per_prompt: int, lease_seconds: float
) -> Lease | None:
    """The annotator's open lease (renewed), else a new lease on the next prompt they may
    rank; None when their queue is empty."""
    annotator = annotator_id(conn, name)
    row = conn.execute(
        text(
            "SELECT id, token, prompt_id FROM assignments WHERE annotator_id = :a "
            "AND closed_at IS NULL AND expires_at > :now ORDER BY id DESC LIMIT 1"
        ),
        {"a": annotator, "now": now},
    ).first()
    if row is not None:
        conn.execute(
            text("UPDATE assignments SET expires_at = :until WHERE id = :id"),
            {"until": now + lease_seconds, "id": row.id},
        )
        return lease_view(conn, name, row.token, row.prompt_id)
    prompt_id = first_available(conn, annotator, now, per_prompt)
    if prompt_id is None:
        return None
    token = open_lease(conn, annotator, prompt_id, now, lease_seconds)
    return lease_view(conn, name, token, prompt_id)


def open_lease(conn: Connection, annotator: int, prompt_id: int, now: float, seconds: float) -> str:
    """Lease `prompt_id` to the annotator (by row id) for `seconds`; returns the lease token."""
    release_open(conn, annotator, now)  # one open lease per annotator: an older one goes back
    token = secrets.token_urlsafe(18)
    conn.execute(
        text(
            "INSERT INTO assignments (token, prompt_id, annotator_id, created_at, expires_at) "
            "VALUES (:token, :p, :a, :now, :until)"
        ),
        {"token": token, "p": prompt_id, "a": annotator, "now": now, "until": now + seconds},
    )
    return token


def release_open(conn: Connection, annotator: int, now: float) -> None:
    """Give the annotator's (by row id) open leases, expired or not, back to the queue."""
    conn.execute(
        text(
            "UPDATE assignments SET closed_at = :now, outcome = 'released' "
            "WHERE annotator_id = :a AND closed_at IS NULL"
        ),
        {"now": now, "a": annotator},
    )


def lease_view(
    conn: Connection, name: str, token: str, prompt_id: int, previous: int | None = None
) -> Lease:
    """The lease as the annotator sees it; with `previous`, that ranking's ranks filled in."""
    prompt = conn.execute(
        text("SELECT messages, source FROM prompts WHERE id = :p"), {"p": prompt_id}
    ).one()
    messages = json.loads(prompt.messages)
    rows = conn.execute(
        text("SELECT id, text FROM candidates WHERE prompt_id = :p ORDER BY position"),
        {"p": prompt_id},
    ).all()
    order = display_order(name, prompt_id, len(rows))
    previous_ranks = None
    if previous is not None:
        ranks = dict(
            conn.execute(
                text("SELECT candidate_id, rank FROM ranking_items WHERE ranking_id = :r"),
                {"r": previous},
            ).all()
        )
        previous_ranks = [ranks.get(rows[i].id) for i in order]
    expires = conn.execute(
        text("SELECT expires_at FROM assignments WHERE token = :token"), {"token": token}
    ).scalar_one()
    return Lease(
        token=token,
        prompt_id=prompt_id,
        messages=messages,
        texts=[rows[i].text for i in order],
        expires_at=expires,
        previous_ranks=previous_ranks,
        source=prompt.source,
    )


def claim(conn: Connection, name: str, token: str, now: float, per_prompt: int) -> Row:
    """The open assignment behind `token`, checked to be this annotator's and still valid."""
    annotator = annotator_id(conn, name)
    lease = conn.execute(
        text("SELECT * FROM assignments WHERE token = :token"), {"token": token}
    ).first()
    if lease is None or lease.annotator_id != annotator:
        raise LeaseError("Stale lease: this prompt is not assigned to you.")
    if lease.closed_at is not None:
        why = {
            "ranked": "you already submitted a ranking for it",
            "skipped": "you already skipped it",
            "released": "it was released (taken back or replaced by a newer one)",
        }[lease.outcome]
        raise LeaseError(f"Stale lease: {why}.")
    # Expired: still fine if the slot is free, so slow annotators lose nothing when nobody
    # else needed the prompt meanwhile.
    if lease.expires_at <= now and not available(conn, annotator, lease.prompt_id, now, per_prompt):
        raise LeaseError(
            "Stale lease: your time on this prompt ran out and other annotators have "
            "since filled it; this ranking was not saved."
        )
    return lease
