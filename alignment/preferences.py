"""Preference data for the reward model: every supported format read into one form, `Comparison`.

Formats, detected per row from its keys (or forced with `rm.format`):

- rankings, the ranking UI's rankings export: `prompt` (chat messages), `completions` (answer
  texts, best first) and `ranks` (`ranks[i]` is the rank group of `completions[i]`: 1 = best,
  equal numbers = a tie), plus `ranking_id`, `prompt_id`, `annotator`.
- pairs, the ranking UI's pairs export: `prompt` (chat messages), `chosen` and `rejected` (each a
  list holding one assistant message), `ranking_id`, `annotator`, and `tie` when ties were kept.
- trl, TRL's preference rows: `chosen`/`rejected` with an explicit `prompt` or an implicit one
  (the shared start of both), either as chat message lists or as plain text; optional `margin`,
  which the Bradley–Terry loss subtracts: -log σ(r_chosen - r_rejected - margin).
- hh, HH-RLHF text: `chosen`/`rejected` as "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues,
  converted to chat messages (consecutive turns of one speaker are joined), so they go through
  the tokenizer's chat template like every other chat row.

A `Comparison` is one training element: K >= 2 answers to one prompt with their rank groups, and
the (better, worse) pairs they yield. Tie rule: two answers of equal rank form no pair, since a tie
says neither is preferred and the Bradley–Terry model has no term for "equal". A pair marked as a
tie, or a ranking tied throughout, therefore trains nothing and is skipped.

Bad input never disappears silently: a row that cannot train (identical chosen and rejected, an
empty answer, fewer than two candidates, a tie) is skipped, counted by reason and named by file
and line in the log and the run summary; an empty completion inside a ranking that still trains is
dropped, counted and named the same way. Malformed rows and unknown formats raise DataError
naming the file and line.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from alignment.config import DataSpec, Format
from alignment.data import check_turns, read_rows
from alignment.errors import DataError
from alignment.tokens import Conversation, Messages

log = logging.getLogger(__name__)

SKIP_IDENTICAL = "identical chosen and rejected"
SKIP_EMPTY = "empty answer"
SKIP_FEW = "fewer than 2 candidates"
SKIP_TIE = "tie (no preferred answer)"
DROP_EMPTY = "empty completion in a ranking"
DROP_IDENTICAL = "identical completions ranked apart"

_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


@dataclass(frozen=True)
class Comparison:
    """K >= 2 answers to one prompt, their rank groups (1 = best) and the pairs they train."""

    origin: str  # "file:line" (or "dataset[split] row N") of the row it came from
    prompt: Conversation  # the conversation before the answers; "" or [] when there is none
    answers: tuple[Conversation, ...]  # what follows the prompt in each candidate
    ranks: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]  # (better, worse) answer indices
    margin: float = 0.0

    @property
    def best(self) -> int:
        """The index of the first answer in the best rank group."""
        return self.ranks.index(min(self.ranks))

    def conversation(self, index: int) -> Conversation:
        """The prompt followed by answer `index`: what the reward model scores."""
        answer = self.answers[index]
        if isinstance(answer, str):
            return f"{self.prompt}{answer}"
        return [*self.prompt, *answer]


def with_off_topic_answers(comparisons: Sequence[Comparison], seed: int) -> list[Comparison]:
    """Each comparison with one candidate more: the best answer to another prompt, in one pair
    below this prompt's best answer (it may still beat a poor answer on topic, so no other pair).

    A ranking compares answers to one prompt, so a reward model can fit rankings while hardly
    reading the prompt, and PPO can drift to answers that would suit any prompt (bench/RESULTS.md:
    the quickstart's RMs scored an answer under another prompt only 0.17-0.27 std lower). Which
    other prompt is drawn with `seed`; comparisons are left alone when all prompts are the same.
    """
    order = list(range(len(comparisons)))
    random.Random(seed).shuffle(order)
    # Each comparison borrows from the next one in a shuffled cycle that has another prompt.
    donor = {}
    for position, index in enumerate(order):
        for step in range(1, len(order)):
            other = order[(position + step) % len(order)]
            if comparisons[other].prompt != comparisons[index].prompt:
                donor[index] = other
                break
    extended = []
    for index, comparison in enumerate(comparisons):
        if index not in donor:
            extended.append(comparison)
            continue
        other = comparisons[donor[index]]
        best = comparison.best
        extended.append(
            replace(
                comparison,
                answers=(*comparison.answers, other.answers[other.best]),
                ranks=(*comparison.ranks, comparison.ranks[best] + 1),
                pairs=(*comparison.pairs, (best, len(comparison.answers))),
            )
        )
    return extended


REPORTED_ORIGINS = 20  # rows named per reason in a run summary; the counts cover them all
LOGGED_ORIGINS = 5  # rows named per reason in the log line


@dataclass
class PreferenceData:
    source: str
    comparisons: list[Comparison]
    rows: int = 0
    formats: Counter[str] = field(default_factory=Counter)  # rows read, by detected format
    skipped: Counter[str] = field(default_factory=Counter)  # rows left out, by reason
    dropped: Counter[str] = field(default_factory=Counter)  # parts of kept rankings left out
    # Where: the origin ("file:line") of every row left out, or with parts left out, by reason.
    skipped_at: dict[str, list[str]] = field(default_factory=dict)
    dropped_at: dict[str, list[str]] = field(default_factory=dict)

    @property
    def pair_count(self) -> int:
        return sum(len(c.pairs) for c in self.comparisons)

    def report(self) -> dict[str, Any]:
        """The figures a run summary shows for this data, with the first rows left out named."""
        return {
            "source": self.source,
            "rows": self.rows,
            "comparisons": len(self.comparisons),
            "pairs": self.pair_count,
            "formats": dict(self.formats),
            "skipped": dict(self.skipped),
            "dropped": dict(self.dropped),
            "skipped_rows": _first(self.skipped_at, REPORTED_ORIGINS),
            "dropped_rows": _first(self.dropped_at, REPORTED_ORIGINS),
        }

    def describe_left_out(self) -> str:
        """One line naming, by reason, the rows skipped or trimmed: the count and the first rows."""
        parts = [
            f"{verb} {count}, {reason}: {_named(where[reason], LOGGED_ORIGINS)}"
            for verb, counts, where in (
                ("skipped", self.skipped, self.skipped_at),
                ("dropped", self.dropped, self.dropped_at),
            )
            for reason, count in counts.items()
        ]
        return "; ".join(parts)


def _first(origins: dict[str, list[str]], limit: int) -> dict[str, list[str]]:
    return {reason: where[:limit] for reason, where in origins.items()}


def _named(origins: list[str], limit: int) -> str:
    more = len(origins) - limit
    return ", ".join(origins[:limit]) + (f" and {more} more" if more > 0 else "")


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row is in, judged from its keys; None when no supported format fits."""
    if "completions" in row or "ranks" in row:
        return "rankings"
    if "chosen" in row and "rejected" in row:
        if "ranking_id" in row:
            return "pairs"
        chosen = row["chosen"]
        if row.get("prompt") is None and isinstance(chosen, str) and _looks_like_hh(chosen):
            return "hh"
        return "trl"
    return None


def _looks_like_hh(text: str) -> bool:
    return text.lstrip("\n").startswith("Human:") and "\n\nAssistant:" in text


def hh_to_messages(origin: str, text: Any, key: str) -> Messages:
    """HH-RLHF dialogue text as chat messages (Human -> user, Assistant -> assistant)."""
    parts = _HH_MARKER.split(text) if isinstance(text, str) else []
    if len(parts) < 3 or parts[0].strip():
        raise DataError(
            f"{origin}: `{key}` is not HH-RLHF text; expected "
            "'\\n\\nHuman: ...\\n\\nAssistant: ...'"
        )
    messages: Messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if messages and messages[-1]["role"] == role:
            # Chat templates expect alternating turns; HH has a few repeated speakers.
            joined = "\n\n".join(t for t in (messages[-1]["content"], content) if t)
            messages[-1]["content"] = joined
        else:
            messages.append({"role": role, "content": content})
    return messages


def _turn_list(origin: str, value: Any, key: str, role: str) -> Messages:
    """A chat message list as given, or text as one message of `role`."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return value
    raise DataError(f"{origin}: `{key}` must be text or a list of chat messages")


def _is_empty(answer: Conversation) -> bool:
    if isinstance(answer, str):
        return not answer.strip()
    return not any(str(m.get("content") or "").strip() for m in answer)


def _pairs(answers: list[Conversation], ranks: list[int], dropped: Counter[str]) -> list:
    pairs = []
    for i in range(len(answers)):
        for j in range(len(answers)):
            if ranks[i] < ranks[j]:
                if answers[i] == answers[j]:
                    dropped[DROP_IDENTICAL] += 1  # the same text cannot be better than itself
                    continue
                pairs.append((i, j))
    return pairs


def _margin(origin: str, row: dict[str, Any]) -> float:
    value = row.get("margin")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{origin}: `margin` must be a finite number, got {value!r}")
    return float(value)


def _parse_ranking(origin: str, row: dict[str, Any], dropped: Counter[str]) -> Comparison:
    for key in ("prompt", "completions", "ranks"):
        if row.get(key) is None:
            raise DataError(f"{origin}: rankings row has no `{key}` (keys: {sorted(row)})")
    prompt = check_turns(origin, _turn_list(origin, row["prompt"], "prompt", "user"))
    completions, ranks = row["completions"], row["ranks"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise DataError(f"{origin}: `completions` must be a list of answer texts")
    if (
        not isinstance(ranks, list)
        or len(ranks) != len(completions)
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks)
    ):
        raise DataError(
            f"{origin}: `ranks` must be a list of {len(completions)} rank numbers >= 1 "
            f"(one per completion, 1 = best), got {ranks!r}"
        )
    kept = [i for i, text in enumerate(completions) if text.strip()]
    if len(kept) < len(completions):
        dropped[DROP_EMPTY] += len(completions) - len(kept)
    if len(kept) < 2:
        raise _Skip(SKIP_FEW)
    answers: list[Conversation] = [[{"role": "assistant", "content": completions[i]}] for i in kept]
    kept_ranks = [ranks[i] for i in kept]
    pairs = _pairs(answers, kept_ranks, dropped)
    if not pairs:
        raise _Skip(SKIP_TIE if len(set(kept_ranks)) == 1 else SKIP_IDENTICAL)
    return Comparison(origin, prompt, tuple(answers), tuple(kept_ranks), tuple(pairs))


def _split_shared_start(
    chosen: Messages, rejected: Messages
) -> tuple[Messages, Messages, Messages]:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _parse_chosen_rejected(origin: str, row: dict[str, Any], fmt: str) -> Comparison:
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise DataError(f"{origin}: {fmt} row has no `{key}` (keys: {sorted(row)})")
    tie = row.get("tie")
    if tie is not None and not isinstance(tie, bool):
        raise DataError(f"{origin}: `tie` must be true or false, got {tie!r}")
    if tie:
        raise _Skip(SKIP_TIE)
    margin = _margin(origin, row)
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if fmt == "hh":
        if prompt is not None:
            raise DataError(f"{origin}: HH-RLHF rows carry the prompt inside `chosen`/`rejected`")
        chosen = hh_to_messages(origin, chosen, "chosen")
        rejected = hh_to_messages(origin, rejected, "rejected")

    if isinstance(chosen, str) and isinstance(rejected, str) and not isinstance(prompt, list):
        # Plain text (TRL's "standard" form): scored as raw text, without a chat template.
        prompt_text = prompt or ""
        if not isinstance(prompt_text, str):
            raise DataError(f"{origin}: `prompt` must be text when `chosen` is text")
        if _is_empty(chosen) or _is_empty(rejected):
            raise _Skip(SKIP_EMPTY)
        if chosen == rejected:
            raise _Skip(SKIP_IDENTICAL)
        return Comparison(origin, prompt_text, (chosen, rejected), (1, 2), ((0, 1),), margin)

    chosen = _turn_list(origin, chosen, "chosen", "assistant")
    rejected = _turn_list(origin, rejected, "rejected", "assistant")
    if prompt is None:
        turns, chosen, rejected = _split_shared_start(chosen, rejected)
    else:
        turns = _turn_list(origin, prompt, "prompt", "user")
    if chosen == rejected:
        raise _Skip(SKIP_IDENTICAL)
    if _is_empty(chosen) or _is_empty(rejected):
        raise _Skip(SKIP_EMPTY)
    for answer in (chosen, rejected):
        check_turns(origin, [*turns, *answer])  # roles and contents, with the row's origin
    return Comparison(origin, turns, (chosen, rejected), (1, 2), ((0, 1),), margin)


def _row_format(origin: str, row: dict[str, Any], fmt: Format) -> str:
    kind = detect_format(row) if fmt == "auto" else fmt
    if kind is None:
        raise DataError(
            f"{origin}: unknown preference format with keys {sorted(row)}; expected "
            "`prompt`+`completions`+`ranks` (rankings export) or `chosen`+`rejected` (pairs "
            "export, TRL preference rows, HH-RLHF text)"
        )
    return kind


def read_preferences(
    source: DataSpec, split: str = "train", fmt: Format = "auto"
) -> PreferenceData:
    """Every usable comparison of a file or `datasets` split, with skips counted by reason."""
    data = PreferenceData(str(source), [])
    for origin, row in read_rows(source, split):
        data.rows += 1
        kind = _row_format(origin, row, fmt)
        data.formats[kind] += 1
        dropped: Counter[str] = Counter()
        try:
            if kind == "rankings":
                comparison = _parse_ranking(origin, row, dropped)
            else:
                comparison = _parse_chosen_rejected(origin, row, kind)
        except _Skip as skip:
            data.skipped[skip.reason] += 1
            data.skipped_at.setdefault(skip.reason, []).append(origin)
            continue
        finally:
            data.dropped.update(dropped)
            for reason in dropped:
                data.dropped_at.setdefault(reason, []).append(origin)
        data.comparisons.append(comparison)
    if data.skipped or data.dropped:
        log.warning("%s: %s", source, data.describe_left_out())
    if not data.comparisons:
        raise DataError(
            f"{source}: no usable comparisons in {data.rows} rows "
            f"({data.describe_left_out() or 'none skipped'})"
        )
    return data
