"""The queue tables (schema: `queue`, `queue_sizes`, `queue_done`, `done_sizes`, `queue_cursors`,
`queue_reopened`), kept in the transaction of every write that changes what they summarise: a
prompt's first candidates, a ranking, a skip, a retraction. One code path for SQLite and
PostgreSQL (SQLite files of schema version 2 kept them with triggers; version 3 dropped those).

Each function does a fixed number of indexed statements, whatever the store holds, so lease,
submit and undo cost the same at a million prompts as at a thousand.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# A prompt below an annotator's cursor may have become free again: list it for those cursors.
_REOPEN = (
    "INSERT INTO queue_reopened (annotator_id, per_prompt, prompt_id) "
    "SELECT annotator_id, per_prompt, :p FROM queue_cursors WHERE next_prompt > :p {also} "
    "ON CONFLICT DO NOTHING"
)
_SIZE_ADD = (
    "INSERT INTO queue_sizes (ranked, prompts) VALUES (:r, 1) "
    "ON CONFLICT (ranked) DO UPDATE SET prompts = queue_sizes.prompts + 1"
)
_DONE_SIZE_ADD = (
    "INSERT INTO done_sizes (annotator_id, ranked, prompts) VALUES (:a, :r, 1) "
    "ON CONFLICT (annotator_id, ranked) DO UPDATE SET prompts = done_sizes.prompts + 1"
)


def prompt_queued(conn: Connection, prompt_id: int) -> None:
    """A prompt got its candidates: it joins the queue (call once, after they are stored)."""
    conn.execute(text("INSERT INTO queue (prompt_id, ranked) VALUES (:p, 0)"), {"p": prompt_id})
    conn.execute(text(_SIZE_ADD), {"r": 0})
    conn.execute(text(_REOPEN.format(also="")), {"p": prompt_id})


def _ranked(conn: Connection, prompt_id: int) -> int:
    return conn.execute(
        text("SELECT ranked FROM queue WHERE prompt_id = :p"), {"p": prompt_id}
    ).scalar_one()


def _move(conn: Connection, prompt_id: int, old: int, new: int) -> None:
    """The prompt's count of current rankings goes from `old` to `new`: move it between the
    size counts, its own and those of every annotator done with it."""
    conn.execute(
        text("UPDATE queue SET ranked = :new WHERE prompt_id = :p"), {"new": new, "p": prompt_id}
    )
    conn.execute(text("UPDATE queue_sizes SET prompts = prompts - 1 WHERE ranked = :r"), {"r": old})
    conn.execute(text(_SIZE_ADD), {"r": new})
    done_by = conn.execute(
        text("SELECT annotator_id FROM queue_done WHERE prompt_id = :p"), {"p": prompt_id}
    ).scalars()
    for annotator in list(done_by):
        conn.execute(
            text(
                "UPDATE done_sizes SET prompts = prompts - 1 "
                "WHERE annotator_id = :a AND ranked = :r"
            ),
            {"a": annotator, "r": old},
        )
        conn.execute(text(_DONE_SIZE_ADD), {"a": annotator, "r": new})


def _done(conn: Connection, annotator: int, prompt_id: int, ranked: int) -> None:
    conn.execute(
        text("INSERT INTO queue_done (annotator_id, prompt_id) VALUES (:a, :p)"),
        {"a": annotator, "p": prompt_id},
    )
    conn.execute(text(_DONE_SIZE_ADD), {"a": annotator, "r": ranked})


def _undone(conn: Connection, annotator: int, prompt_id: int, ranked: int) -> None:
    """The annotator is no longer done with the prompt: it may be theirs to rank again."""
    conn.execute(
        text("DELETE FROM queue_done WHERE annotator_id = :a AND prompt_id = :p"),
        {"a": annotator, "p": prompt_id},
    )
    conn.execute(
        text("UPDATE done_sizes SET prompts = prompts - 1 WHERE annotator_id = :a AND ranked = :r"),
        {"a": annotator, "r": ranked},
    )
    conn.execute(
        text(_REOPEN.format(also="AND annotator_id = :a")), {"p": prompt_id, "a": annotator}
    )


def ranking_added(conn: Connection, annotator: int, prompt_id: int) -> None:
    """A current ranking was stored: one more for the prompt, which the annotator is done with."""
    ranked = _ranked(conn, prompt_id)
    _move(conn, prompt_id, ranked, ranked + 1)
    _done(conn, annotator, prompt_id, ranked + 1)


def skip_added(conn: Connection, annotator: int, prompt_id: int) -> None:
    """A skip was stored: the annotator is done with the prompt."""
    _done(conn, annotator, prompt_id, _ranked(conn, prompt_id))


def ranking_retracted(conn: Connection, annotator: int, prompt_id: int) -> None:
    """A current ranking was retracted: one fewer for the prompt, which is free again for every N
    it had reached, and open to the annotator again."""
    ranked = _ranked(conn, prompt_id)
    _move(conn, prompt_id, ranked, ranked - 1)
    conn.execute(
        text(_REOPEN.format(also="AND per_prompt > :new AND per_prompt <= :old")),
        {"p": prompt_id, "new": ranked - 1, "old": ranked},
    )
    _undone(conn, annotator, prompt_id, ranked - 1)


def skip_retracted(conn: Connection, annotator: int, prompt_id: int) -> None:
    """A skip was retracted: the prompt is open to the annotator again."""
    _undone(conn, annotator, prompt_id, _ranked(conn, prompt_id))


def rebuild(conn: Connection) -> None:
    """Recompute every queue table from the rows it summarises (after bulk loading rows with
    plain INSERTs). Cursors start again from the first prompt."""
    for table in ("queue_reopened", "queue_cursors", "done_sizes", "queue_done", "queue_sizes"):
        conn.execute(text(f"DELETE FROM {table}"))
    conn.execute(text("DELETE FROM queue"))
    conn.execute(
        text(
            "INSERT INTO queue (prompt_id, ranked) "
            "SELECT p.id, (SELECT count(*) FROM current_rankings r WHERE r.prompt_id = p.id) "
            "FROM prompts p WHERE EXISTS (SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)"
        )
    )
    conn.execute(
        text(
            "INSERT INTO queue_sizes (ranked, prompts) SELECT ranked, count(*) FROM queue "
            "GROUP BY ranked"
        )
    )
    conn.execute(
        text(
            "INSERT INTO queue_done (annotator_id, prompt_id) "
            "SELECT annotator_id, prompt_id FROM current_rankings "
            "UNION SELECT annotator_id, prompt_id FROM current_skips"
        )
    )
    conn.execute(
        text(
            "INSERT INTO done_sizes (annotator_id, ranked, prompts) "
            "SELECT d.annotator_id, q.ranked, count(*) FROM queue_done d "
            "JOIN queue q ON q.prompt_id = d.prompt_id GROUP BY d.annotator_id, q.ranked"
        )
    )
