"""The store's pure rules: prompt identity, each annotator's answer order, answer letters, and
what makes a valid ranking. No database code here."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence

from .errors import SubmissionError

ROLES = ("annotator", "admin")
# A prompt with this source is a blind A/B pair of a human evaluation (`alignment.human_eval`):
# the ranking app asks which of its two answers is better instead of for ranks.
AB_EVALUATION = "a/b evaluation"
BOTH_BAD = "Both answers are bad"  # the skip reason behind the "Both bad" verdict


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """Stable identity of a prompt: the same conversation read twice is sampled once."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def display_order(annotator: str, prompt_id: int, count: int) -> list[int]:
    """Positions in the order this annotator sees them: shuffled, but stable across reloads."""
    seed = hashlib.sha256(f"{annotator}\0{prompt_id}".encode()).digest()
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def letter(index: int) -> str:
    """The label of the answer shown at `index`: A, B, C, ..."""
    return chr(ord("A") + index)


def check_ranks(ranks: Sequence[int | None], tie_allowed: bool) -> list[int]:
    """Validate ranks given in display order and return them as dense rank groups (1 = best).

    Every answer needs a rank in 1..K; equal ranks are ties and need `tie_allowed`, so a tie is
    always a decision, never a slip. Gaps are closed: [1, 3, 3, 4] is stored as [1, 2, 2, 3].
    """
    k = len(ranks)
    missing = [letter(i) for i, r in enumerate(ranks) if r is None or r == ""]
    if missing:
        raise SubmissionError(
            f"Incomplete: give every answer a rank; {', '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} none."
        )
    values: list[int] = []
    for i, raw in enumerate(ranks):
        try:
            value = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SubmissionError(f"Answer {letter(i)}: rank {raw!r} is not a number.") from None
        if isinstance(raw, float) and raw != value:
            raise SubmissionError(f"Answer {letter(i)}: rank {raw!r} is not a whole number.")
        if not 1 <= value <= k:
            raise SubmissionError(f"Answer {letter(i)}: rank {value} is out of range 1..{k}.")
        values.append(value)
    if len(set(values)) < k and not tie_allowed:
        shared = sorted({v for v in values if values.count(v) > 1})
        names = " and ".join(
            ", ".join(letter(i) for i, v in enumerate(values) if v == r) for r in shared
        )
        raise SubmissionError(
            f"Tie not confirmed: {names} share a rank. Tick 'Allow ties' to submit equal ranks, "
            "or give them different ranks."
        )
    dense = {value: group for group, value in enumerate(sorted(set(values)), start=1)}
    return [dense[v] for v in values]
