"""The ranking service: what an annotator can do, for whoever the request says is signed in.

Every action of the page and of the JSON API goes through `RankingService`, which identifies the
signed-in annotator from the request (never from anything the browser sends) and talks to the
store.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from alignment.agreement import agreement
from alignment.export import Aggregate, ExportResult, Format, export
from alignment.human_eval import summarise_humans, verdicts
from alignment.store import AB_EVALUATION, BOTH_BAD, Lease, Store, SubmissionError, Undone

from .annotators import AnnotatorRegistry
from .exports import ExportFolder

log = logging.getLogger(__name__)

SKIP_REASONS = [
    "All answers are equally good or bad",
    "The prompt is unclear or broken",
    "Harmful or offensive content",
    "Needs expertise I don't have",
    "Other (write it below)",
]
OTHER_REASON = SKIP_REASONS[-1]
# The verdicts on an A/B pair: ranks in display order (A, B) and whether they tie; "Both bad" is
# a skip with the reason BOTH_BAD.
VERDICTS: dict[str, tuple[list[int], bool] | None] = {
    "A is better": ([1, 2], False),
    "B is better": ([2, 1], False),
    "Tie": ([1, 1], True),
    "Both bad": None,
}


def start_of_today() -> float:
    """Local midnight, as a timestamp: "today" in the progress counts."""
    now = datetime.datetime.now().astimezone()
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def require_admin(role: str) -> None:
    if role != "admin":
        raise SubmissionError("Admins only.")


@dataclass
class RankingService:
    """What an annotator can do, for whoever the request says is signed in."""

    store: Store
    registry: AnnotatorRegistry | None = None  # None: trusted single-user mode
    single_user: str | None = None
    per_prompt: int = 1
    lease_seconds: float = 600.0
    exports: ExportFolder | None = None  # default: beside the database

    def __post_init__(self) -> None:
        if self.registry is None and not self.single_user:
            raise ValueError("either an annotators file or a single user is needed")
        if self.exports is None:
            self.exports = ExportFolder.for_store(self.store)
        if self.registry is not None:
            self.sync()
        else:
            self.store.sync_annotators([(self.single_user, "admin")])

    def sync(self) -> None:
        if self.registry is not None:
            self.store.sync_annotators([(a.name, a.role) for a in self.registry.all().values()])

    def authenticate(self, name: str, password: str) -> bool:
        """Gradio's sign-in check; also brings an annotator added since start-up into the store."""
        assert self.registry is not None
        ok = self.registry.authenticate(name, password)
        if ok:
            annotator = self.registry.get(name)
            self.store.sync_annotators([(annotator.name, annotator.role)])
        else:
            log.warning("failed sign-in for %r", name)
        return ok

    def user(self, request: gr.Request | None) -> tuple[str, str]:
        """(name, role) of the signed-in annotator; refuses anyone not in the annotators file."""
        if self.registry is None:
            return self.single_user, "admin"  # type: ignore[return-value]
        name = getattr(request, "username", None)
        annotator = self.registry.get(name)
        if annotator is None:
            raise SubmissionError(
                f"Unknown annotator {name!r}: not in the annotators file. Sign in again."
                if name
                else "Not signed in."
            )
        return annotator.name, annotator.role

    def next(self, name: str) -> Lease | None:
        return self.store.lease(name, self.per_prompt, self.lease_seconds)

    def submit(
        self, name: str, token: str, ranks: list[int | None], tie: bool
    ) -> tuple[int, Lease | None]:
        """Store the ranking and lease the next prompt, in one transaction."""
        return self.store.submit_and_next(
            name, token, ranks, tie, self.per_prompt, self.lease_seconds
        )

    def skip(self, name: str, token: str, reason: str, note: str = "") -> tuple[int, Lease | None]:
        """Skip with a reason from SKIP_REASONS and/or a note ('Other' needs the note)."""
        reason, note = (reason or "").strip(), (note or "").strip()
        if reason == OTHER_REASON:
            if not note:
                raise SubmissionError("Skip needs a reason: write it in the box below the list.")
            reason = f"Other: {note}"
        elif note:
            reason = f"{reason}: {note}" if reason else note
        return self.store.skip_and_next(name, token, reason, self.per_prompt, self.lease_seconds)

    def judge_pair(self, name: str, token: str, verdict: str) -> tuple[int, Lease | None]:
        """Store a verdict (a VERDICTS label) on an A/B pair and lease the next prompt."""
        if verdict not in VERDICTS:
            raise SubmissionError(f"Unknown verdict {verdict!r}: one of {', '.join(VERDICTS)}.")
        ranks_and_tie = VERDICTS[verdict]
        if ranks_and_tie is None:
            return self.store.skip_and_next(
                name, token, BOTH_BAD, self.per_prompt, self.lease_seconds
            )
        return self.submit(name, token, *ranks_and_tie)

    def sign_out(self, name: str) -> None:
        """Give the annotator's leased prompt back to the queue, so nobody waits for it."""
        self.store.release_all(name)

    def undo(self, name: str) -> Undone | None:
        """Retract the annotator's last submission; its prompt is leased back to them."""
        return self.store.undo(name, self.lease_seconds)

    def progress(self, name: str) -> tuple[int, int]:
        """(submissions today, prompts left in the annotator's queue)."""
        return self.store.progress(name, self.per_prompt, start_of_today())

    def admin_stats(self, role: str) -> dict[str, Any]:
        """Admins: progress per annotator, agreement, and row counts."""
        require_admin(role)
        report = agreement(self.store.current_rankings(min_annotators=2))
        pairs = self.store.prompts_from(AB_EVALUATION)
        human = summarise_humans(verdicts(self.store), pairs, seed=0) if pairs else None
        return {
            "human": human,
            "annotators": [
                {
                    "name": p.name,
                    "role": p.role,
                    "rankings": p.rankings,
                    "skips": p.skips,
                    "today": p.today,
                }
                for p in self.store.annotator_progress(start_of_today())
            ],
            "agreement": report.as_dict(),
            "counts": self.store.counts(),
        }

    def export(
        self, role: str, fmt: Format, aggregate: Aggregate, min_annotators: int, ties: bool
    ) -> ExportResult:
        """Admins: write an export (mode 0600) to the export folder, to be downloaded once."""
        require_admin(role)
        out = self.exports.new_file(f"{fmt}.jsonl")
        try:
            return export(self.store, fmt, out, min_annotators, ties, aggregate, file_mode=0o600)
        except BaseException:
            self.exports.remove(out)
            raise
