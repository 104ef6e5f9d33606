"""Showing model text safely: markdown rendered on the server with all raw HTML escaped.

Model output is untrusted. markdown-it runs with `html` off, so a `<script>` or an
`<img onerror=...>` in an answer is escaped to text before any markup is produced; images are off
too (an image would fetch from an arbitrary host) and so are HTML entities (an answer that says
`&lt;` shows `&lt;`). Links keep markdown-it's own filter of javascript:/vbscript:/data: URLs and
open in a new tab without a referrer. No gradio import here.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from markdown_it import MarkdownIt

_markdown = (
    # breaks: a single newline stays a line break, as model answers are written line by line.
    MarkdownIt(
        "commonmark", {"html": False, "breaks": True, "linkify": False, "typographer": False}
    )
    .enable(["table", "strikethrough"])
    .disable(["image", "entity"])
)


def _link_open(self, tokens, idx, options, env):
    tokens[idx].attrSet("target", "_blank")
    tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
    return self.renderToken(tokens, idx, options, env)


_markdown.add_render_rule("link_open", _link_open)


def render_markdown(text: str) -> str:
    """HTML for untrusted markdown: formatting kept, every raw HTML tag shown as text."""
    return _markdown.render(text)


def render_raw(text: str) -> str:
    """The exact characters, escaped, in a preformatted block (the "show raw text" view)."""
    return f'<pre class="raw-text">{html.escape(text)}</pre>'


def render_text(text: str, raw: bool = False) -> str:
    return render_raw(text) if raw else render_markdown(text)


ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_conversation(messages: Sequence[dict[str, str]], raw: bool = False) -> str:
    """The prompt: each turn with its role, contents rendered like answers."""
    parts = []
    for message in messages:
        role = ROLE_NAMES.get(message.get("role", ""), html.escape(str(message.get("role"))))
        parts.append(
            f'<div class="turn turn-{html.escape(message.get("role", ""))}">'
            f'<div class="turn-role">{role}</div>'
            f'<div class="turn-text">{render_text(message.get("content", ""), raw)}</div></div>'
        )
    return "".join(parts)
