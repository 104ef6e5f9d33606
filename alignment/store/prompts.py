"""Prompts and their sampled candidates: what `align sample` writes and reads back."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection, RowMapping, text

from . import queueing
from .records import NewCandidate
from .rules import prompt_key


def sampled_keys(conn: Connection) -> set[str]:
    """Keys of prompts that already have candidates (so `align sample` can skip them)."""
    rows = conn.execute(
        text(
            "SELECT key FROM prompts p WHERE EXISTS "
            "(SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)"
        )
    )
    return set(rows.scalars())


def prompts_from(conn: Connection, source: str) -> int:
    """How many prompts came from `source`."""
    return conn.execute(
        text("SELECT count(*) FROM prompts WHERE source = :s"), {"s": source}
    ).scalar_one()


def add_sampled(
    conn: Connection,
    messages: list[dict[str, str]],
    candidates: Sequence[NewCandidate],
    source: str | None,
    now: float,
) -> int | None:
    """Store a prompt and its candidates; None if the prompt already has some."""
    key = prompt_key(messages)
    prompt_id = conn.execute(
        text("SELECT id FROM prompts WHERE key = :key"), {"key": key}
    ).scalar_one_or_none()
    if prompt_id is None:
        prompt_id = conn.execute(
            text(
                "INSERT INTO prompts (key, messages, source, created_at) "
                "VALUES (:key, :messages, :source, :now) RETURNING id"
            ),
            {
                "key": key,
                "messages": json.dumps(messages, ensure_ascii=False),
                "source": source,
                "now": now,
            },
        ).scalar_one()
    elif conn.execute(
        text("SELECT 1 FROM candidates WHERE prompt_id = :p"), {"p": prompt_id}
    ).first():
        return None
    if not candidates:
        return prompt_id
    conn.execute(
        text(
            "INSERT INTO candidates (prompt_id, position, text, num_tokens, finish_reason, "
            "model, adapter, settings, seed, created_at) VALUES (:prompt_id, :position, :text, "
            ":num_tokens, :finish_reason, :model, :adapter, :settings, :seed, :now)"
        ),
        [
            {
                "prompt_id": prompt_id,
                "position": position,
                "text": c.text,
                "num_tokens": c.num_tokens,
                "finish_reason": c.finish_reason,
                "model": c.model,
                "adapter": c.adapter,
                "settings": json.dumps(c.settings, sort_keys=True),
                "seed": c.seed,
                "now": now,
            }
            for position, c in enumerate(candidates)
        ],
    )
    queueing.prompt_queued(conn, prompt_id)
    return prompt_id


def candidates(conn: Connection, prompt_id: int) -> list[RowMapping]:
    """Every stored column of a prompt's candidates, in sampling order."""
    return list(
        conn.execute(
            text("SELECT * FROM candidates WHERE prompt_id = :p ORDER BY position"),
            {"p": prompt_id},
        ).mappings()
    )


def max_candidates(conn: Connection) -> int:
    """The most candidates any one prompt has (0 for an empty store)."""
    most = conn.execute(
        text("SELECT max(n) FROM (SELECT count(*) AS n FROM candidates GROUP BY prompt_id) c")
    ).scalar_one()
    return most or 0
