"""Prompts and their sampled candidates: what `align sample` writes and reads back."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from .records import NewCandidate
from .rules import prompt_key


def sampled_keys(conn: sqlite3.Connection) -> set[str]:
    """Keys of prompts that already have candidates (so `align sample` can skip them)."""
    rows = conn.execute(
        "SELECT key FROM prompts p WHERE EXISTS "
        "(SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)"
    )
    return {row[0] for row in rows}


def add_sampled(
    conn: sqlite3.Connection,
    messages: list[dict[str, str]],
    candidates: Sequence[NewCandidate],
    source: str | None,
    now: float,
) -> int | None:
    """Store a prompt and its candidates; None if the prompt already has some."""
    key = prompt_key(messages)
    row = conn.execute("SELECT id FROM prompts WHERE key = ?", (key,)).fetchone()
    if row is None:
        prompt_id = conn.execute(
            "INSERT INTO prompts (key, messages, source, created_at) VALUES (?, ?, ?, ?)",
            (key, json.dumps(messages, ensure_ascii=False), source, now),
        ).lastrowid
    else:
        prompt_id = row[0]
        if conn.execute("SELECT 1 FROM candidates WHERE prompt_id = ?", (prompt_id,)).fetchone():
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


def candidates(conn: sqlite3.Connection, prompt_id: int) -> list[sqlite3.Row]:
    """Every stored column of a prompt's candidates, in sampling order."""
    return conn.execute(
        "SELECT * FROM candidates WHERE prompt_id = ? ORDER BY position", (prompt_id,)
    ).fetchall()


def max_candidates(conn: sqlite3.Connection) -> int:
    """The most candidates any one prompt has (0 for an empty store)."""
    row = conn.execute(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM candidates GROUP BY prompt_id)"
    ).fetchone()
    return row[0] or 0
