"""The ranking store: prompts, sampled candidates, annotators, leases, rankings and skips, in an
SQLite file (the embedded default) or a PostgreSQL database (`postgresql://user@host/dbname`),
with one set of SQL for both through SQLAlchemy.

Design rules, all enforced by the database itself where it can:
- Every write is one transaction, serialised with every other store write (SQLite: WAL,
  `BEGIN IMMEDIATE`, `synchronous=FULL`; PostgreSQL: a transaction-scoped advisory lock), so an
  acknowledged submission survives a killed process and the leasing rule below holds across
  threads and processes (`connection`).
- The schema is versioned (SQLite: `PRAGMA user_version`; PostgreSQL: a row in `app_settings`);
  older SQLite files are upgraded in place (`schema`, `schema_history`).
- Nothing a user saved is overwritten or deleted: prompts, candidates, rankings, skips and
  retractions are append-only (triggers refuse UPDATE and DELETE). A changed ranking is a new row
  that `supersedes` the old one; undo adds a retraction. "Current" rows are the ones neither
  superseded nor retracted (the `current_rankings` and `current_skips` views).
- Assignments are short leases: an annotator holds at most one open lease, and a prompt is handed
  out only while its current rankings plus other annotators' live leases are below N, so two people
  never fill the same last slot (`leasing`, over the queue tables `queueing` keeps).

One module per concern: `schema`, `database_rules`, `schema_history`, `connection`, `records`, `rules`, `errors`,
`prompts`, `annotators`, `queueing`, `leasing`, `submissions`, `queries`, `sessions`; `Store`
(`ranking_store`) is the object callers hold. The names below are the public ones.
"""

from .errors import LeaseError, StoreError, SubmissionError, UnknownAnnotatorError
from .ranking_store import Store
from .records import (
    AnnotatorProgress,
    Lease,
    NewCandidate,
    RankedItem,
    StoredRanking,
    StoredSkip,
    Undone,
)
from .rules import AB_EVALUATION, BOTH_BAD, ROLES, check_ranks, display_order, letter, prompt_key
from .schema import SCHEMA_VERSION

__all__ = [
    "AB_EVALUATION",
    "BOTH_BAD",
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
    "StoredSkip",
    "SubmissionError",
    "Undone",
    "UnknownAnnotatorError",
    "check_ranks",
    "display_order",
    "letter",
    "prompt_key",
]
