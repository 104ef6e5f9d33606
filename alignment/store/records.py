"""The plain records that go into the store and come out of it; no database code here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NewCandidate:
    """A sampled answer on its way into the store, with everything needed to reproduce it."""

    text: str
    model: str
    settings: dict[str, Any]
    seed: int | None = None
    adapter: str | None = None
    num_tokens: int | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class Lease:
    """A prompt handed to one annotator: candidates are in that annotator's display order."""

    token: str
    prompt_id: int
    messages: list[dict[str, str]]
    texts: list[str]  # display order; model, adapter and candidate ids deliberately left out
    expires_at: float
    previous_ranks: list[int] | None = None  # the retracted ranking, after an undo
    source: str | None = None  # where the prompt came from; AB_EVALUATION marks an A/B pair


@dataclass(frozen=True)
class Undone:
    """A retracted ranking or skip, and the lease that hands its prompt back."""

    kind: str  # "ranking" or "skip"
    row_id: int
    prompt_id: int
    lease: Lease


@dataclass(frozen=True)
class RankedItem:
    """One candidate of a stored ranking with the rank group it was given (1 = best)."""

    candidate_id: int
    position: int
    text: str
    rank: int


@dataclass
class StoredRanking:
    """A current ranking as export and agreement read it."""

    ranking_id: int
    prompt_id: int
    messages: list[dict[str, str]]
    annotator: str
    created_at: float
    tie: bool
    items: list[RankedItem] = field(default_factory=list)  # best first


@dataclass(frozen=True)
class StoredSkip:
    """A current skip: who could not rank which prompt, and why."""

    skip_id: int
    prompt_id: int
    annotator: str
    reason: str
    created_at: float


@dataclass(frozen=True)
class AnnotatorProgress:
    """One annotator's counts of current rankings and skips, for the admin view."""

    name: str
    role: str
    rankings: int
    skips: int
    today: int
    last_active: float | None
