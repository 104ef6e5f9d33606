"""The ranking store: prompts, sampled candidates, annotators, leases, rankings and skips in SQLite.

Design rules, all enforced by the database itself where it can:
- WAL journal, foreign keys on, every write in one `BEGIN IMMEDIATE` transaction, a busy timeout,
  and `synchronous=FULL`, so an acknowledged submission survives a killed process or a power cut
  (`connection`).
- The schema is versioned with `PRAGMA user_version`; `schema.MIGRATIONS` upgrade old files in
  place.
- Nothing a user saved is overwritten or deleted: prompts, candidates, rankings, skips and
  retractions are append-only (triggers refuse UPDATE and DELETE). A changed ranking is a new row
  that `supersedes` the old one; undo adds a retraction. "Current" rows are the ones neither
  superseded nor retracted (the `current_rankings` and `current_skips` views).
- Assignments are short leases: an annotator holds at most one open lease, and a prompt is handed
  out only while its current rankings plus other annotators' live leases are below N, so two people
  never fill the same last slot (`leasing`).

One module per concern: `schema`, `connection`, `records`, `rules`, `errors`, `prompts`,
`annotators`, `leasing`, `submissions`, `queries`; `Store` (`ranking_store`) is the object callers
hold. The names below are the public ones.
"""

from .errors import LeaseError, StoreError, SubmissionError, UnknownAnnotatorError
from .ranking_store import Store
from .records import AnnotatorProgress, Lease, NewCandidate, RankedItem, StoredRanking, Undone
from .rules import ROLES, check_ranks, display_order, letter, prompt_key
from .schema import SCHEMA_VERSION

__all__ = [
    "ROLES",
    "SCHEMA_VERSION",
    "AnnotatorProgress",
    "Lease",
    "LeaseError",
    "NewCandidate",
    "RankedItem",
    "Store",
    "StoreError",
    "StoredRanking",
    "SubmissionError",
    "Undone",
    "UnknownAnnotatorError",
    "check_ranks",
    "display_order",
    "letter",
    "prompt_key",
]
