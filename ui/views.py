"""The page's layout: the Rank and Admin tabs, their look (CSS, system fonts) and the keyboard
shortcuts. Every interactive element has an elem_id (listed in ui/README.md) so browser tests and
the shortcuts can find it. No behaviour here: events are wired in app.py to handlers.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from alignment.store import letter

from .service import SKIP_REASONS, VERDICTS

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

**A/B pairs** (a human evaluation): two answers, A and B; say which is better, *Tie* when
neither is, or *Both bad* when neither is acceptable.

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
/* The label comes before the character: inside the isolate, an override acts on nothing. */
.invisible-char { unicode-bidi: isolate; }
.invisible-char::before {
  content: "⟨" attr(data-label) "⟩"; font-size: 0.75em; padding: 0 2px;
  border-radius: 3px; background: var(--color-accent-soft); color: var(--body-text-color);
}
.empty-answer { opacity: 0.7; }
.turn { margin-bottom: 6px; }
.turn-role { font-weight: 600; opacity: 0.7; }
#message { min-height: 1.5em; }
"""

# A new prompt on screen (the hidden `shown` token changed): bring it into view.
SCROLL_TO_PROMPT_JS = (
    "() => { document.getElementById('prompt')?.scrollIntoView({block: 'start'}); }"
)
# Sign-out gives the lease back first (a server event), then leaves through Gradio's /logout.
SIGN_OUT_JS = "() => { window.location.assign('logout'); }"

# System fonts only: the default theme would fetch web fonts from a third-party host.
THEME_FONTS = {
    "font": ["ui-sans-serif", "system-ui", "sans-serif"],
    "font_mono": ["ui-monospace", "SFMono-Regular", "monospace"],
}


@dataclass
class RankingView:
    """The Rank tab, plus the progress line its actions update."""

    state: gr.State  # {"token", "prompt", "answers"} of the prompt on screen
    shown: gr.Textbox  # hidden: the lease token on screen; when it changes, the page scrolls
    progress: gr.Markdown
    prompt: gr.HTML
    boxes: list[gr.Column]
    answers: list[gr.HTML]
    ranks: list[gr.Radio]
    order: gr.Markdown
    tie: gr.Checkbox
    raw: gr.Checkbox
    submit: gr.Button
    undo: gr.Button
    refresh: gr.Button
    next_prompt: gr.Button  # shown when the prompt on screen can no longer be submitted
    message: gr.Markdown
    skip_reason: gr.Dropdown
    skip_note: gr.Textbox
    skip: gr.Button
    comparison: gr.Row  # shown instead of the ranks for an A/B pair of a human evaluation
    verdicts: dict[str, gr.Button]  # VERDICTS label -> its button

    @property
    def form(self) -> list[gr.blocks.Block]:
        """What showing a prompt updates, in the order the handlers return values."""
        return [
            self.state,
            self.shown,
            self.prompt,
            *self.boxes,
            *self.answers,
            *self.ranks,
            self.order,
            self.tie,
            self.next_prompt,
            self.message,
            self.progress,
            self.submit,
            self.comparison,
        ]


@dataclass
class AdminView:
    """The Admin tab: progress, agreement and export."""

    tab: gr.Tab
    refresh: gr.Button
    summary: gr.Markdown
    people: gr.Dataframe
    agreement: gr.Dataframe
    export_format: gr.Radio
    export_aggregate: gr.Radio
    export_min: gr.Number
    export_ties: gr.Checkbox
    export: gr.Button
    export_message: gr.Markdown
    export_file: gr.File


@dataclass
class Page:
    """The whole page: the sign-in line and the two tabs."""

    whoami: gr.Markdown
    sign_out: gr.Button
    ranking: RankingView
    admin: AdminView


def build_page(guidelines: str, slots: int) -> Page:
    """Lay the page out inside the current gr.Blocks, with `slots` answer boxes (hidden until a
    prompt needs them)."""
    state = gr.State(None)
    with gr.Row(equal_height=True):
        whoami = gr.Markdown(elem_id="whoami")
        progress = gr.Markdown(elem_id="progress")
        sign_out = gr.Button("Sign out", visible=False, size="sm", scale=0, elem_id="sign-out")
    with gr.Accordion("Guidelines", open=False, elem_id="guidelines"):
        gr.Markdown(guidelines, elem_id="guidelines-text")
    with gr.Tabs(elem_id="tabs"):
        with gr.Tab("Rank", elem_id="tab-rank"):
            ranking = build_ranking_tab(state, progress, slots)
        with gr.Tab("Admin", visible=False, elem_id="tab-admin") as admin_tab:
            admin = build_admin_tab(admin_tab)
    return Page(whoami, sign_out, ranking, admin)


def build_answer_slots(slots: int) -> tuple[list[gr.Column], list[gr.HTML], list[gr.Radio]]:
    """Answer boxes two to a row, each with its text and rank choices."""
    boxes, answers, ranks = [], [], []
    for row_start in range(0, slots, 2):
        with gr.Row(equal_height=False):
            for i in range(row_start, min(row_start + 2, slots)):
                with gr.Column(
                    visible=False, elem_id=f"answer-box-{i}", elem_classes="answer-box"
                ) as box:
                    gr.Markdown(f"**Answer {letter(i)}**")
                    answers.append(
                        gr.HTML(elem_id=f"answer-{i}", elem_classes="answer-text", js_on_load=None)
                    )
                    ranks.append(
                        gr.Radio(
                            [], label=f"Rank of answer {letter(i)} (1 = best)", elem_id=f"rank-{i}"
                        )
                    )
                boxes.append(box)
    return boxes, answers, ranks


def build_ranking_tab(state: gr.State, progress: gr.Markdown, slots: int) -> RankingView:
    shown = gr.Textbox(visible=False, elem_id="shown")
    prompt = gr.HTML(elem_id="prompt", js_on_load=None, padding=True)
    boxes, answers, ranks = build_answer_slots(slots)
    order = gr.Markdown(elem_id="order")
    with gr.Row(visible=False, elem_id="comparison") as comparison:
        verdicts = {
            label: gr.Button(label, variant="primary", elem_id=f"verdict-{slug}")
            for label, slug in zip(VERDICTS, ("a", "b", "tie", "both-bad"), strict=True)
        }
    with gr.Row():
        tie = gr.Checkbox(label="Allow ties (some answers share a rank)", elem_id="tie")
        raw = gr.Checkbox(label="Show raw text", elem_id="raw")
    with gr.Row():
        submit = gr.Button("Submit ranking (Ctrl+Enter)", variant="primary", elem_id="submit")
        undo = gr.Button("Undo last submission (U)", elem_id="undo")
        refresh = gr.Button("Check for new prompts", elem_id="refresh")
    message = gr.Markdown(elem_id="message")
    next_prompt = gr.Button(
        "Go to the next prompt", variant="primary", visible=False, elem_id="next-prompt"
    )
    with gr.Accordion("Skip: can't rank this prompt", open=True, elem_id="skip-panel"), gr.Row():
        skip_reason = gr.Dropdown(SKIP_REASONS, value=None, label="Reason", elem_id="skip-reason")
        skip_note = gr.Textbox(label="Details (needed for Other)", elem_id="skip-note", lines=1)
        skip = gr.Button("Skip this prompt", elem_id="skip")
    return RankingView(
        state=state,
        shown=shown,
        progress=progress,
        prompt=prompt,
        boxes=boxes,
        answers=answers,
        ranks=ranks,
        order=order,
        tie=tie,
        raw=raw,
        submit=submit,
        undo=undo,
        refresh=refresh,
        next_prompt=next_prompt,
        message=message,
        skip_reason=skip_reason,
        skip_note=skip_note,
        skip=skip,
        comparison=comparison,
        verdicts=verdicts,
    )


def build_admin_tab(tab: gr.Tab) -> AdminView:
    refresh = gr.Button("Refresh", elem_id="admin-refresh")
    summary = gr.Markdown(elem_id="admin-summary")
    people = gr.Dataframe(
        headers=["annotator", "role", "rankings", "skips", "today"],
        interactive=False,
        elem_id="admin-progress",
    )
    agreement = gr.Dataframe(
        headers=["prompt", "annotators", "kendall tau-b", "krippendorff alpha"],
        interactive=False,
        elem_id="admin-agreement",
    )
    with gr.Row():
        export_format = gr.Radio(
            ["pairs", "rankings"], value="pairs", label="Format", elem_id="export-format"
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
    export = gr.Button("Export", elem_id="export")
    export_message = gr.Markdown(elem_id="export-message")
    export_file = gr.File(label="Export file", elem_id="export-file")
    return AdminView(
        tab=tab,
        refresh=refresh,
        summary=summary,
        people=people,
        agreement=agreement,
        export_format=export_format,
        export_aggregate=export_aggregate,
        export_min=export_min,
        export_ties=export_ties,
        export=export,
        export_message=export_message,
        export_file=export_file,
    )
