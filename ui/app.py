"""The ranking app (Gradio Blocks): annotators rank K sampled answers per prompt, best first.

Launched by `align ui`. Every action goes through `RankingService`, which identifies the signed-in
annotator from the request (never from anything the browser sends) and talks to the store. The
same service backs the page's events and a small JSON API for scripts (`/next`, `/submit`,
`/skip`, `/undo`, `/progress`, `/admin_stats`), callable with gradio_client.

Every interactive element has an elem_id (see ELEM_IDS in ui/README.md) so browser tests and the
keyboard shortcuts can find it.
"""

from __future__ import annotations

import datetime
import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from alignment.agreement import agreement
from alignment.errors import AlignmentError
from alignment.export import export
from alignment.store import Lease, Store, SubmissionError, letter

from .annotators import AnnotatorRegistry
from .render import render_conversation, render_text

log = logging.getLogger(__name__)

SKIP_REASONS = [
    "All answers are equally good or bad",
    "The prompt is unclear or broken",
    "Harmful or offensive content",
    "Needs expertise I don't have",
    "Other (write it below)",
]
OTHER_REASON = SKIP_REASONS[-1]

DEFAULT_GUIDELINES = """\
**Rank the answers best first.** Rank 1 is the best answer; every answer gets a rank.

- Judge what a careful, helpful assistant should have said: correct, complete, clear, safe, and
  honest about what it does not know. Prefer a short right answer to a long wrong one.
- Judge the answer, not its formatting. Markdown is rendered; tick *Show raw text* to see exactly
  what the model wrote.
- **Ties:** if two answers are truly equally good, give them the same rank and tick
  *Allow ties*. Use ties sparingly: a small preference is still a preference.
- **Skip** when you cannot rank fairly (unclear prompt, needs expertise, harmful content) and say
  why. **Undo** takes back your last submission so you can change it; nothing is lost.
- Answers appear in a random order and do not show which model wrote them. Do not guess.

**Keyboard** (outside text fields): a letter `A`-`H` then a digit `1`-`9` ranks that answer;
`T` toggles *Allow ties*; `Ctrl+Enter` submits; `S` goes to the skip reason; `U` undoes;
`R` toggles raw text; `?` opens or closes these guidelines.
"""

# Keyboard shortcuts. Clicking the real inputs keeps Gradio's own state in charge.
SHORTCUTS_JS = """
<script>
(() => {
  let pending = null;
  const q = (selector) => document.querySelector(selector);
  const click = (selector) => { const el = q(selector); if (el) { el.click(); } return !!el; };
  const shown = (el) => !!el && el.offsetParent !== null;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      if (click("#submit")) { event.preventDefault(); }
      return;
    }
    const typing = target && (target.tagName === "TEXTAREA" || target.isContentEditable ||
      (target.tagName === "INPUT" && !["radio", "checkbox"].includes(target.type)));
    if (typing || event.ctrlKey || event.metaKey || event.altKey) { return; }
    const key = event.key.toLowerCase();
    if (pending !== null && /^[1-9]$/.test(key)) {
      click(`#rank-${pending} input[value="${key}"]`);
      document.querySelectorAll(".answer-box.pending").forEach((el) => el.classList.remove("pending"));
      pending = null;
      event.preventDefault();
      return;
    }
    if (/^[a-h]$/.test(key)) {
      const index = key.charCodeAt(0) - 97;
      const box = q(`#answer-box-${index}`);
      if (shown(box)) {
        document.querySelectorAll(".answer-box.pending").forEach((el) => el.classList.remove("pending"));
        pending = index;
        box.classList.add("pending");
        event.preventDefault();
      }
      return;
    }
    pending = null;
    const actions = {
      t: () => click("#tie input[type=checkbox]"),
      u: () => click("#undo"),
      r: () => click("#raw input[type=checkbox]"),
      s: () => { const el = q("#skip-reason input"); if (el) { el.focus(); } return !!el; },
      "?": () => click("#guidelines > button, #guidelines .label-wrap"),
    };
    if (actions[key] && actions[key]()) { event.preventDefault(); }
  });
})();
</script>
"""

CSS = """
.answer-box { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.answer-box.pending { outline: 3px solid var(--color-accent); }
.answer-text { max-height: 60vh; overflow: auto; overflow-wrap: anywhere; }
.raw-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: var(--font-mono); }
.turn { margin-bottom: 6px; }
.turn-role { font-weight: 600; opacity: 0.7; }
#message { min-height: 1.5em; }
"""

# System fonts only: the default theme would fetch web fonts from a third-party host.
THEME_FONTS = {
    "font": ["ui-sans-serif", "system-ui", "sans-serif"],
    "font_mono": ["ui-monospace", "SFMono-Regular", "monospace"],
}


def start_of_today() -> float:
    now = datetime.datetime.now().astimezone()
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def lease_dict(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "token": lease.token,
        "prompt_id": lease.prompt_id,
        "prompt": lease.messages,
        "answers": lease.texts,
        "k": len(lease.texts),
        "expires_at": lease.expires_at,
        "previous_ranks": lease.previous_ranks,
    }


@dataclass
class RankingService:
    """What an annotator can do, for whoever the request says is signed in."""

    store: Store
    registry: AnnotatorRegistry | None = None  # None: trusted single-user mode
    single_user: str | None = None
    per_prompt: int = 1
    lease_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.registry is None and not self.single_user:
            raise ValueError("either an annotators file or a single user is needed")
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
        reason, note = (reason or "").strip(), (note or "").strip()
        if reason == OTHER_REASON:
            if not note:
                raise SubmissionError("Skip needs a reason: write it in the box below the list.")
            reason = f"Other: {note}"
        elif note:
            reason = f"{reason}: {note}" if reason else note
        return self.store.skip_and_next(name, token, reason, self.per_prompt, self.lease_seconds)

    def progress(self, name: str) -> tuple[int, int]:
        return self.store.progress(name, self.per_prompt, start_of_today())

    def admin_stats(self, role: str) -> dict[str, Any]:
        if role != "admin":
            raise SubmissionError("Admins only.")
        report = agreement(self.store.current_rankings(min_annotators=2))
        return {
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


def _api(service: RankingService) -> dict[str, Callable[..., Any]]:
    """Plain-JSON endpoints; SubmissionError becomes gr.Error, which clients see as the message."""

    def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # gradio reads the signature (types, gr.Request) through __wrapped__
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except AlignmentError as err:
                raise gr.Error(str(err), print_exception=False) from None

        return run

    def next_prompt(request: gr.Request) -> dict | None:
        """The prompt leased to you (or a new one): token, prompt, answers in your order."""
        name, _ = service.user(request)
        return lease_dict(service.next(name))

    def submit(token: str, ranks: list, tie: bool, request: gr.Request) -> dict:
        """Rank the leased prompt's answers (ranks in the order given by /next); returns the
        ranking id and your next prompt."""
        name, _ = service.user(request)
        ranking_id, lease = service.submit(name, token, list(ranks), bool(tie))
        return {"ranking_id": ranking_id, "next": lease_dict(lease)}

    def skip(token: str, reason: str, request: gr.Request) -> dict:
        """Skip the leased prompt with a reason; returns the skip id and your next prompt."""
        name, _ = service.user(request)
        skip_id, lease = service.skip(name, token, reason)
        return {"skip_id": skip_id, "next": lease_dict(lease)}

    def undo(request: gr.Request) -> dict | None:
        """Retract your last submission; its prompt is leased back to you."""
        name, _ = service.user(request)
        undone = service.store.undo(name, service.lease_seconds)
        if undone is None:
            return None
        return {"undone": undone.kind, "id": undone.row_id, "next": lease_dict(undone.lease)}

    def progress(request: gr.Request) -> dict:
        """Your submissions today and prompts left in your queue."""
        name, _ = service.user(request)
        done, left = service.progress(name)
        return {"annotator": name, "done_today": done, "left": left}

    def admin_stats(request: gr.Request) -> dict:
        """Admins: progress per annotator and agreement."""
        _, role = service.user(request)
        return service.admin_stats(role)

    return {
        name: guarded(fn)
        for name, fn in {
            "next": next_prompt,
            "submit": submit,
            "skip": skip,
            "undo": undo,
            "progress": progress,
            "admin_stats": admin_stats,
        }.items()
    }


def build_app(
    service: RankingService, guidelines: str = DEFAULT_GUIDELINES, slots: int | None = None
) -> gr.Blocks:
    """The Blocks app. `slots` is the most answers one prompt can show (default: what the store
    holds, at least 8)."""
    slots = max(8, service.store.max_candidates(), slots or 0)

    with gr.Blocks(title="Rank answers") as demo:
        state = gr.State(None)  # {"token", "prompt", "answers"} of the prompt on screen
        with gr.Row():
            whoami = gr.Markdown(elem_id="whoami")
            progress = gr.Markdown(elem_id="progress")
        with gr.Accordion("Guidelines", open=False, elem_id="guidelines"):
            gr.Markdown(guidelines, elem_id="guidelines-text")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Rank", elem_id="tab-rank"):
                prompt_view = gr.HTML(elem_id="prompt", js_on_load=None, padding=True)
                boxes, views, radios = [], [], []
                for row_start in range(0, slots, 2):
                    with gr.Row(equal_height=False):
                        for i in range(row_start, min(row_start + 2, slots)):
                            with gr.Column(
                                visible=False, elem_id=f"answer-box-{i}", elem_classes="answer-box"
                            ) as box:
                                gr.Markdown(f"**Answer {letter(i)}**")
                                view = gr.HTML(
                                    elem_id=f"answer-{i}",
                                    elem_classes="answer-text",
                                    js_on_load=None,
                                )
                                radio = gr.Radio(
                                    [],
                                    label=f"Rank of answer {letter(i)} (1 = best)",
                                    elem_id=f"rank-{i}",
                                )
                            boxes.append(box)
                            views.append(view)
                            radios.append(radio)
                with gr.Row():
                    tie = gr.Checkbox(label="Allow ties (some answers share a rank)", elem_id="tie")
                    raw = gr.Checkbox(label="Show raw text", elem_id="raw")
                with gr.Row():
                    submit = gr.Button(
                        "Submit ranking (Ctrl+Enter)", variant="primary", elem_id="submit"
                    )
                    undo = gr.Button("Undo last submission (U)", elem_id="undo")
                    refresh = gr.Button("Check for new prompts", elem_id="refresh")
                message = gr.Markdown(elem_id="message")
                with (
                    gr.Accordion("Skip: can't rank this prompt", open=True, elem_id="skip-panel"),
                    gr.Row(),
                ):
                    skip_reason = gr.Dropdown(
                        SKIP_REASONS, value=None, label="Reason", elem_id="skip-reason"
                    )
                    skip_note = gr.Textbox(
                        label="Details (needed for Other)", elem_id="skip-note", lines=1
                    )
                    skip = gr.Button("Skip this prompt", elem_id="skip")
            with gr.Tab("Admin", visible=False, elem_id="tab-admin") as admin_tab:
                admin_refresh = gr.Button("Refresh", elem_id="admin-refresh")
                admin_summary = gr.Markdown(elem_id="admin-summary")
                admin_people = gr.Dataframe(
                    headers=["annotator", "role", "rankings", "skips", "today"],
                    interactive=False,
                    elem_id="admin-progress",
                )
                admin_agreement = gr.Dataframe(
                    headers=["prompt", "annotators", "kendall tau-b", "krippendorff alpha"],
                    interactive=False,
                    elem_id="admin-agreement",
                )
                with gr.Row():
                    export_format = gr.Radio(
                        ["pairs", "rankings"],
                        value="pairs",
                        label="Format",
                        elem_id="export-format",
                    )
                    export_aggregate = gr.Radio(
                        ["none", "mean-rank"],
                        value="none",
                        label="Aggregate annotators",
                        elem_id="export-aggregate",
                    )
                    export_min = gr.Number(
                        1, precision=0, minimum=1, label="Min annotators", elem_id="export-min"
                    )
                    export_ties = gr.Checkbox(label="Include ties", elem_id="export-ties")
                export_button = gr.Button("Export", elem_id="export")
                export_note = gr.Markdown(elem_id="export-message")
                export_file = gr.File(label="Export file", elem_id="export-file")

        form = [state, prompt_view, *boxes, *views, *radios, tie, message, progress]

        def form_values(name: str, lease: Lease | None, raw_text: bool, note: str) -> list[Any]:
            done, left = service.progress(name)
            progress_text = f"**Done today:** {done} · **Left in queue:** {left}"
            if lease is None:
                return [
                    None,
                    "<p><strong>Your queue is empty.</strong> Thank you! Check back later for "
                    "new prompts.</p>",
                    *[gr.update(visible=False) for _ in boxes],
                    *["" for _ in views],
                    *[gr.update(choices=[], value=None) for _ in radios],
                    False,
                    note,
                    progress_text,
                ]
            k = len(lease.texts)
            if k > slots:
                note += f"\n\n**Warning:** this prompt has {k} answers but the page shows {slots}: restart `align ui`."
            previous = lease.previous_ranks or [None] * k
            return [
                {"token": lease.token, "prompt": lease.messages, "answers": lease.texts},
                render_conversation(lease.messages, raw_text),
                *[gr.update(visible=i < k) for i in range(slots)],
                *[render_text(lease.texts[i], raw_text) if i < k else "" for i in range(slots)],
                *[
                    gr.update(choices=list(range(1, k + 1)), value=previous[i])
                    if i < k
                    else gr.update(choices=[], value=None)
                    for i in range(slots)
                ],
                bool(lease.previous_ranks) and len(set(previous)) < k,
                note,
                progress_text,
            ]

        def refused(err: Exception, heading: str = "**Not saved.** ") -> list[Any]:
            # The form stays exactly as the annotator left it; only the message changes.
            updates: list[Any] = [gr.skip() for _ in form]
            updates[form.index(message)] = f"{heading}{err}"
            return updates

        def on_load(raw_text: bool, request: gr.Request) -> list[Any]:
            try:
                name, role = service.user(request)
            except SubmissionError as err:
                return ["", gr.update(visible=False), *refused(err)]
            lease = service.next(name)
            sign_out = "" if service.registry is None else " · [Sign out](logout)"
            return [
                f"Signed in as **{name}** ({role}){sign_out}",
                gr.update(visible=role == "admin"),
                *form_values(name, lease, raw_text, ""),
            ]

        def on_submit(values: dict, request: gr.Request) -> list[Any]:
            # A set of inputs arrives as one dict keyed by component (K varies per prompt).
            current, allow_tie, raw_text = values[state], values[tie], values[raw]
            ranks = [values[radio] for radio in radios]
            try:
                name, _ = service.user(request)
                if not current:
                    raise SubmissionError("Nothing to submit: your queue is empty.")
                k = len(current["answers"])
                ranking_id, lease = service.submit(
                    name, current["token"], list(ranks[:k]), allow_tie
                )
            except SubmissionError as err:
                return refused(err)
            note = f"**Saved** ranking #{ranking_id}." + (" Next prompt below." if lease else "")
            return form_values(name, lease, raw_text, note)

        def on_skip(
            current: dict | None, reason: str, note: str, raw_text: bool, request: gr.Request
        ) -> list[Any]:
            try:
                name, _ = service.user(request)
                if not current:
                    raise SubmissionError("Nothing to skip: your queue is empty.")
                skip_id, lease = service.skip(name, current["token"], reason, note)
            except SubmissionError as err:
                return [*refused(err), gr.skip(), gr.skip()]
            text = f"**Skipped** (#{skip_id})." + (" Next prompt below." if lease else "")
            return [*form_values(name, lease, raw_text, text), None, ""]

        def on_undo(raw_text: bool, request: gr.Request) -> list[Any]:
            try:
                name, _ = service.user(request)
                undone = service.store.undo(name, service.lease_seconds)
            except SubmissionError as err:
                return refused(err)
            if undone is None:
                return refused(SubmissionError("Nothing to undo."), heading="")
            what = "ranking" if undone.kind == "ranking" else "skip"
            text = (
                f"**Undid** your {what} #{undone.row_id}. It is back below: change it and submit "
                "again (the old one stays in the history)."
            )
            return form_values(name, undone.lease, raw_text, text)

        def on_refresh(raw_text: bool, request: gr.Request) -> list[Any]:
            try:
                name, _ = service.user(request)
            except SubmissionError as err:
                return refused(err)
            return form_values(name, service.next(name), raw_text, "")

        def on_raw(current: dict | None, raw_text: bool) -> list[Any]:
            if not current:
                return [gr.skip() for _ in (prompt_view, *views)]
            answers = current["answers"]
            return [
                render_conversation(current["prompt"], raw_text),
                *[
                    render_text(answers[i], raw_text) if i < len(answers) else ""
                    for i in range(slots)
                ],
            ]

        def on_admin(request: gr.Request) -> list[Any]:
            try:
                _, role = service.user(request)
                stats = service.admin_stats(role)
            except SubmissionError as err:
                return [f"**Not allowed.** {err}", gr.skip(), gr.skip()]
            report = stats["agreement"]

            def fmt(value: float | None) -> str:
                return "n/a" if value is None else f"{value:.3f}"

            summary = (
                f"**Prompts with 2+ rankings:** {report['prompts_compared']} · "
                f"**mean Kendall's tau-b:** {fmt(report['mean_kendall_tau_b'])} · "
                f"**Krippendorff's alpha (ordinal):** {fmt(report['krippendorff_alpha_ordinal'])}"
                f" · **current rankings:** {stats['counts']['current_rankings']} · "
                f"**skips:** {stats['counts']['current_skips']}"
            )
            people = [
                [a["name"], a["role"], a["rankings"], a["skips"], a["today"]]
                for a in stats["annotators"]
            ]
            prompts = [
                [
                    p["prompt_id"],
                    ", ".join(p["annotators"]),
                    fmt(p["kendall_tau_b"]),
                    fmt(p["krippendorff_alpha_ordinal"]),
                ]
                for p in report["per_prompt"]
            ]
            return [summary, people, prompts]

        def on_export(
            fmt: str, aggregate: str, min_annotators: float, ties: bool, request: gr.Request
        ) -> list[Any]:
            try:
                _, role = service.user(request)
                if role != "admin":
                    raise SubmissionError("Admins only.")
                out = Path(tempfile.mkdtemp(prefix="align-export-")) / f"{fmt}.jsonl"
                result = export(
                    service.store,
                    fmt,
                    out,
                    int(min_annotators or 1),
                    ties,
                    aggregate,  # type: ignore[arg-type]
                )
            except AlignmentError as err:
                return [f"**Export failed.** {err}", None]
            return [f"Exported {result.rows} {fmt} rows.", str(out)]

        private = {"api_visibility": "private"}
        demo.load(on_load, [raw], [whoami, admin_tab, *form], **private)
        submit.click(on_submit, {state, *radios, tie, raw}, form, **private)
        skip.click(
            on_skip,
            [state, skip_reason, skip_note, raw],
            [*form, skip_reason, skip_note],
            **private,
        )
        undo.click(on_undo, [raw], form, **private)
        refresh.click(on_refresh, [raw], form, **private)
        raw.change(on_raw, [state, raw], [prompt_view, *views], show_progress="hidden", **private)
        admin_tab.select(on_admin, None, [admin_summary, admin_people, admin_agreement], **private)
        admin_refresh.click(
            on_admin, None, [admin_summary, admin_people, admin_agreement], **private
        )
        export_button.click(
            on_export,
            [export_format, export_aggregate, export_min, export_ties],
            [export_note, export_file],
            **private,
        )
        for name, fn in _api(service).items():
            gr.api(fn, api_name=name)
    return demo


def load_guidelines(path: str | Path | None) -> str:
    if path is None:
        return DEFAULT_GUIDELINES
    path = Path(path)
    if not path.is_file():
        raise AlignmentError(f"{path}: guidelines file not found")
    return path.read_text(encoding="utf-8")


def launch(
    db: str | Path,
    annotators: str | Path | None = None,
    single_user: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    per_prompt: int = 1,
    lease_seconds: float = 600.0,
    guidelines: str | Path | None = None,
    block: bool = True,
) -> tuple[gr.Blocks, RankingService]:
    """Open the store, build the app and serve it (in the background when block=False)."""
    if (annotators is None) == (single_user is None):
        raise AlignmentError("give either --annotators FILE or --single-user NAME")
    if per_prompt < 1:
        raise AlignmentError(f"--per-prompt {per_prompt}: must be 1 or more")
    registry = AnnotatorRegistry(annotators) if annotators is not None else None
    if registry is not None and not registry.all():
        raise AlignmentError(
            f"{annotators}: no annotators yet; add one with `align annotators add`"
        )
    if single_user is not None:
        from .annotators import check_name

        check_name(single_user)
    store = Store(db)
    service = RankingService(store, registry, single_user, per_prompt, lease_seconds)
    demo = build_app(service, load_guidelines(guidelines))
    demo.queue(default_concurrency_limit=8)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=service.authenticate if registry is not None else None,
        auth_message="Sign in with the name and password your admin gave you.",
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        footer_links=[],
        theme=gr.themes.Default(**THEME_FONTS),
        css=CSS,
        head=SHORTCUTS_JS,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
    )
    return demo, service
