"""The page's event handlers: each turns one browser event into a RankingService call and returns
the component updates that show the result. A refusal changes only the message line, so the form
stays exactly as the annotator left it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from alignment.errors import AlignmentError
from alignment.export import Aggregate, Format
from alignment.stats import Interval
from alignment.store import AB_EVALUATION, Lease, LeaseError, SubmissionError, letter

from .render import render_conversation, render_text
from .service import RankingService
from .views import RankingView

EMPTY_QUEUE = (
    "<p><strong>Your queue is empty.</strong> Thank you! Check back later for new prompts.</p>"
)


PAIR_QUESTION = "**Which answer is better?** Or is it a tie, or are both bad?"

STALE = (
    "\n\nYour ranks are still on screen, but this prompt can no longer take them: press "
    "**Go to the next prompt** to go on."
)


def chosen_order(ranks: list[Any], tie_allowed: bool) -> str:
    """The order the ranks give, best first, e.g. "A > C = B > D", with what is still missing."""
    given = {i: int(r) for i, r in enumerate(ranks) if r not in (None, "")}
    if not given:
        return "Your order: give each answer a rank (1 = best)."
    groups = [
        " = ".join(letter(i) for i in sorted(given) if given[i] == rank)
        for rank in sorted(set(given.values()))
    ]
    text = f"Your order: **{' > '.join(groups)}**"
    missing = [letter(i) for i in range(len(ranks)) if i not in given]
    if missing:
        text += f" · not ranked yet: {', '.join(missing)}"
    if len(set(given.values())) < len(given) and not tie_allowed:
        text += " · equal ranks need *Allow ties*"
    return text


def score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def admin_tables(stats: dict[str, Any]) -> list[Any]:
    """The admin tab's summary line, per-annotator rows and per-prompt agreement rows."""
    report = stats["agreement"]
    summary = (
        f"**Prompts with 2+ rankings:** {report['prompts_compared']} · "
        f"**mean Kendall's tau-b:** {score(report['mean_kendall_tau_b'])} · "
        f"**Krippendorff's alpha (ordinal):** {score(report['krippendorff_alpha_ordinal'])}"
        f" · **current rankings:** {stats['counts']['current_rankings']} · "
        f"**skips:** {stats['counts']['current_skips']}"
    )
    human = stats.get("human")
    if human:
        counts = ", ".join(f"{label}: {n}" for label, n in human["verdicts"].items())
        summary += f"\n\n**A/B evaluation** ({human['pairs']} pairs): {counts}"
        if "win_rate" in human:
            per_person = "; ".join(
                f"{name} {Interval(**own['win_rate'])} ({own['judgements']})"
                for name, own in human["per_annotator"].items()
            )
            summary += (
                f" · **final policy's win rate over SFT:** {Interval(**human['win_rate'])} "
                f"(95% interval over prompts) · by annotator: {per_person}"
            )
    people = [
        [a["name"], a["role"], a["rankings"], a["skips"], a["today"]] for a in stats["annotators"]
    ]
    prompts = [
        [
            p["prompt_id"],
            ", ".join(p["annotators"]),
            score(p["kendall_tau_b"]),
            score(p["krippendorff_alpha_ordinal"]),
        ]
        for p in report["per_prompt"]
    ]
    return [summary, people, prompts]


class PageHandlers:
    """The handlers of one page (its Rank tab is `view`); `on_*` methods are wired to the page's
    events in app.py."""

    def __init__(self, service: RankingService, view: RankingView) -> None:
        self.service = service
        self.view = view
        self.form = view.form
        self.slots = len(view.boxes)

    def show(self, name: str, lease: Lease | None, raw_text: bool, note: str) -> list[Any]:
        """Updates for `form`: the leased prompt and its answers (or the empty queue), the
        retracted ranks after an undo, `note` as the message, and fresh progress."""
        done, left = self.service.progress(name)
        progress_text = f"**Done today:** {done} · **Left in queue:** {left}"
        slots = range(self.slots)
        if lease is None:
            return [
                None,
                "",
                EMPTY_QUEUE,
                *[gr.update(visible=False) for _ in slots],
                *["" for _ in slots],
                *[gr.update(choices=[], value=None) for _ in slots],
                "",
                False,
                gr.update(visible=False),
                note,
                progress_text,
                gr.update(visible=True),
                gr.update(visible=False),
            ]
        k = len(lease.texts)
        pair = lease.source == AB_EVALUATION and k == 2  # verdict buttons instead of ranks
        if k > self.slots:
            note += (
                f"\n\n**Warning:** this prompt has {k} answers but the page shows {self.slots}: "
                "restart `align ui`."
            )
        previous = lease.previous_ranks or [None] * k
        tie = bool(lease.previous_ranks) and len(set(previous)) < k
        return [
            {"token": lease.token, "prompt": lease.messages, "answers": lease.texts},
            lease.token,
            render_conversation(lease.messages, raw_text),
            *[gr.update(visible=i < k) for i in slots],
            *[render_text(lease.texts[i], raw_text) if i < k else "" for i in slots],
            *[
                gr.update(choices=list(range(1, k + 1)), value=previous[i], visible=not pair)
                if i < k
                else gr.update(choices=[], value=None)
                for i in slots
            ],
            PAIR_QUESTION if pair else chosen_order(previous, tie),
            gr.update(value=tie and not pair, visible=not pair),
            gr.update(visible=False),
            note,
            progress_text,
            gr.update(visible=not pair),
            gr.update(visible=pair),
        ]

    def refused(self, err: Exception, heading: str = "**Not saved.** ") -> list[Any]:
        """Updates for `form` that change only the message; a stale lease also offers the next
        prompt (the ranks stay on screen)."""
        updates: list[Any] = [gr.skip() for _ in self.form]
        text = f"{heading}{err}"
        if isinstance(err, LeaseError):
            text += STALE
            updates[self.form.index(self.view.next_prompt)] = gr.update(visible=True)
        updates[self.form.index(self.view.message)] = text
        return updates

    def on_load(self, raw_text: bool, request: gr.Request) -> list[Any]:
        """Sign-in line, sign-out button and admin tab visibility, and the annotator's current
        or next prompt."""
        try:
            name, role = self.service.user(request)
        except SubmissionError as err:
            return ["", gr.update(visible=False), gr.update(visible=False), *self.refused(err)]
        lease = self.service.next(name)
        return [
            f"Signed in as **{name}** ({role})",
            gr.update(visible=self.service.registry is not None),
            gr.update(visible=role == "admin"),
            *self.show(name, lease, raw_text, ""),
        ]

    def on_order(self, values: dict) -> str:
        """The order line, as the annotator clicks ranks."""
        current = values[self.view.state]
        k = len(current["answers"]) if current else 0
        return chosen_order([values[radio] for radio in self.view.ranks[:k]], values[self.view.tie])

    def on_sign_out(self, request: gr.Request) -> None:
        """Give the leased prompt back before Gradio's /logout (run by the page next)."""
        try:
            name, _ = self.service.user(request)
        except SubmissionError:
            return  # not signed in (any more): nothing is leased to give back
        self.service.sign_out(name)

    def on_submit(self, values: dict, request: gr.Request) -> list[Any]:
        # A set of inputs arrives as one dict keyed by component (K varies per prompt).
        view = self.view
        current, allow_tie, raw_text = values[view.state], values[view.tie], values[view.raw]
        ranks = [values[radio] for radio in view.ranks]
        try:
            name, _ = self.service.user(request)
            if not current:
                raise SubmissionError("Nothing to submit: your queue is empty.")
            k = len(current["answers"])
            ranking_id, lease = self.service.submit(
                name, current["token"], list(ranks[:k]), allow_tie
            )
        except SubmissionError as err:
            return self.refused(err)
        note = f"**Saved** ranking #{ranking_id}." + (" Next prompt below." if lease else "")
        return self.show(name, lease, raw_text, note)

    def verdict_handler(self, verdict: str) -> Callable[[dict | None, bool, gr.Request], list[Any]]:
        """The click handler of one verdict button on an A/B pair."""

        def on_verdict(current: dict | None, raw_text: bool, request: gr.Request) -> list[Any]:
            try:
                name, _ = self.service.user(request)
                if not current:
                    raise SubmissionError("Nothing to judge: your queue is empty.")
                row_id, lease = self.service.judge_pair(name, current["token"], verdict)
            except SubmissionError as err:
                return self.refused(err)
            note = f"**Saved:** {verdict} (#{row_id})." + (" Next prompt below." if lease else "")
            return self.show(name, lease, raw_text, note)

        return on_verdict

    def on_skip(
        self, current: dict | None, reason: str, note: str, raw_text: bool, request: gr.Request
    ) -> list[Any]:
        """Updates for `form`, then the skip reason and note (cleared once saved)."""
        try:
            name, _ = self.service.user(request)
            if not current:
                raise SubmissionError("Nothing to skip: your queue is empty.")
            skip_id, lease = self.service.skip(name, current["token"], reason, note)
        except SubmissionError as err:
            return [*self.refused(err), gr.skip(), gr.skip()]
        text = f"**Skipped** (#{skip_id})." + (" Next prompt below." if lease else "")
        return [*self.show(name, lease, raw_text, text), None, ""]

    def on_undo(self, raw_text: bool, request: gr.Request) -> list[Any]:
        try:
            name, _ = self.service.user(request)
            undone = self.service.undo(name)
        except SubmissionError as err:
            return self.refused(err)
        if undone is None:
            return self.refused(SubmissionError("Nothing to undo."), heading="")
        what = "ranking" if undone.kind == "ranking" else "skip"
        text = (
            f"**Undid** your {what} #{undone.row_id}. It is back below: change it and submit "
            "again (the old one stays in the history)."
        )
        return self.show(name, undone.lease, raw_text, text)

    def on_refresh(self, raw_text: bool, request: gr.Request) -> list[Any]:
        try:
            name, _ = self.service.user(request)
        except SubmissionError as err:
            return self.refused(err)
        return self.show(name, self.service.next(name), raw_text, "")

    def on_raw(self, current: dict | None, raw_text: bool) -> list[Any]:
        """Re-render the prompt and answers on screen, as markdown or as raw text."""
        if not current:
            return [gr.skip() for _ in (self.view.prompt, *self.view.answers)]
        answers = current["answers"]
        return [
            render_conversation(current["prompt"], raw_text),
            *[
                render_text(answers[i], raw_text) if i < len(answers) else ""
                for i in range(self.slots)
            ],
        ]

    def on_admin(self, request: gr.Request) -> list[Any]:
        try:
            _, role = self.service.user(request)
            stats = self.service.admin_stats(role)
        except SubmissionError as err:
            return [f"**Not allowed.** {err}", gr.skip(), gr.skip()]
        return admin_tables(stats)

    def on_export(
        self,
        fmt: Format,
        aggregate: Aggregate,
        min_annotators: float,
        ties: bool,
        request: gr.Request,
    ) -> list[Any]:
        try:
            _, role = self.service.user(request)
            result = self.service.export(role, fmt, aggregate, int(min_annotators or 1), ties)
        except AlignmentError as err:
            return [f"**Export failed.** {err}", None]
        minutes = round(self.service.exports.lifetime / 60)
        note = f"The file is removed once downloaded, or after {minutes} minutes: export again for another copy."
        return [f"Exported {result.rows} {fmt} rows. {note}", str(result.out)]
