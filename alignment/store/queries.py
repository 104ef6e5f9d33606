"""Read-side queries: progress per annotator, table counts, and the current rankings that export
and agreement read. "Current" rows are the ones neither superseded nor retracted (the
`current_rankings` and `current_skips` views)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from sqlalchemy import Connection, text

from .annotators import annotator_id
from .leasing import left_in_queue
from .records import AnnotatorProgress, RankedItem, StoredRanking, StoredSkip

COUNTED = (
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


def counts(conn: Connection) -> dict[str, int]:
    """Rows per table and view."""
    return {
        table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() for table in COUNTED
    }


def progress(
    conn: Connection, name: str, now: float, per_prompt: int, since: float
) -> tuple[int, int]:
    """(submissions since `since`, prompts left in this annotator's queue)."""
    annotator = annotator_id(conn, name)
    done = conn.execute(
        text(
            "SELECT (SELECT count(*) FROM current_rankings WHERE annotator_id = :a "
            "AND created_at >= :since) + (SELECT count(*) FROM current_skips "
            "WHERE annotator_id = :a AND created_at >= :since)"
        ),
        {"a": annotator, "since": since},
    ).scalar_one()
    return done, left_in_queue(conn, annotator, now, per_prompt)


def annotator_progress(conn: Connection, since: float) -> list[AnnotatorProgress]:
    """Every annotator's current rankings and skips, those since `since`, and last activity."""
    rows = conn.execute(
        text(
            """SELECT a.name, a.role,
             (SELECT count(*) FROM current_rankings r WHERE r.annotator_id = a.id) AS rankings,
             (SELECT count(*) FROM current_skips s WHERE s.annotator_id = a.id) AS skips,
             (SELECT count(*) FROM current_rankings r
              WHERE r.annotator_id = a.id AND r.created_at >= :since)
             + (SELECT count(*) FROM current_skips s
                WHERE s.annotator_id = a.id AND s.created_at >= :since) AS today,
             (SELECT max(created_at) FROM rankings r WHERE r.annotator_id = a.id)
               AS last_ranking,
             (SELECT max(created_at) FROM skips s WHERE s.annotator_id = a.id) AS last_skip
           FROM annotators a ORDER BY a.name"""
        ),
        {"since": since},
    ).all()
    return [
        AnnotatorProgress(
            r.name,
            r.role,
            r.rankings,
            r.skips,
            r.today,
            max(r.last_ranking or 0, r.last_skip or 0) or None,
        )
        for r in rows
    ]


def current_rankings(conn: Connection, min_annotators: int) -> Iterator[StoredRanking]:
    """Every current ranking (in id order) of prompts ranked by at least `min_annotators`
    distinct annotators, items best first (ties in sampling order). Rows are streamed (a
    server-side cursor on PostgreSQL), not all held at once."""
    rows = conn.execution_options(stream_results=True, yield_per=1000).execute(
        text(
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
           ORDER BY r.id, i.rank, c.position"""
        ),
        {"m": min_annotators},
    )
    current: StoredRanking | None = None
    messages_cache: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        if current is None or current.ranking_id != row.ranking_id:
            if current is not None:
                yield current
            messages = messages_cache.get(row.prompt_id)
            if messages is None:
                messages = messages_cache[row.prompt_id] = json.loads(row.messages)
            current = StoredRanking(
                ranking_id=row.ranking_id,
                prompt_id=row.prompt_id,
                messages=messages,
                annotator=row.name,
                created_at=row.created_at,
                tie=bool(row.tie),
            )
        current.items.append(RankedItem(row.candidate_id, row.position, row.text, row.rank))
    if current is not None:
        yield current


def current_skips(conn: Connection) -> Iterator[StoredSkip]:
    """Every current skip, in id order."""
    rows = conn.execute(
        text(
            "SELECT s.id, s.prompt_id, a.name, s.reason, s.created_at FROM current_skips s "
            "JOIN annotators a ON a.id = s.annotator_id ORDER BY s.id"
        )
    )
    for row in rows:
        yield StoredSkip(row.id, row.prompt_id, row.name, row.reason, row.created_at)
