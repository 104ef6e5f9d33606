"""Showing model text safely: markdown rendered on the server with all raw HTML escaped.

Model output is untrusted. markdown-it runs with `html` off, so a `<script>` or an
`<img onerror=...>` in an answer is escaped to text before any markup is produced; images are off
too (an image would fetch from an arbitrary host) and so are HTML entities (an answer that says
`&lt;` shows `&lt;`). Links keep markdown-it's own filter of javascript:/vbscript:/data: URLs and
open in a new tab without a referrer.

An empty (or all-blank) answer says so instead of showing a blank card. In the raw view every
character that does not show by itself (zero-width, bidirectional controls, other format and
control characters) gets a visible label, and is kept in the text, isolated, so copying still
gives exactly what the model wrote while a right-to-left override cannot reorder what follows.
No gradio import here.
"""

from __future__ import annotations

import functools
import html
import re
import sys
import unicodedata
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


# Short labels for the invisible characters met most; any other gets its code point.
LABELS = {
    "\u00ad": "SHY",
    "\u034f": "CGJ",
    "\u061c": "ALM",
    "\u180e": "MVS",
    "\u200b": "ZWSP",
    "\u200c": "ZWNJ",
    "\u200d": "ZWJ",
    "\u200e": "LRM",
    "\u200f": "RLM",
    "\u2028": "LSEP",
    "\u2029": "PSEP",
    "\u202a": "LRE",
    "\u202b": "RLE",
    "\u202c": "PDF",
    "\u202d": "LRO",
    "\u202e": "RLO",
    "\u2060": "WJ",
    "\u2066": "LRI",
    "\u2067": "RLI",
    "\u2068": "FSI",
    "\u2069": "PDI",
    "\ufeff": "BOM",
    "\r": "CR",
    "\x00": "NUL",
}
# Letters and marks that draw nothing: the Hangul fillers and the variation selectors.
BLANK_GLYPHS = {"\u115f", "\u1160", "\u3164", "\uffa0"} | {chr(c) for c in range(0xFE00, 0xFE10)}


def is_invisible(char: str) -> bool:
    """Format (Cf), control (Cc, but tab and newline) and line/paragraph separator characters,
    and letters that draw nothing."""
    category = unicodedata.category(char)
    return (
        category in ("Cf", "Zl", "Zp")
        or (category == "Cc" and char not in "\t\n")
        or char in BLANK_GLYPHS
        or 0xE0000 <= ord(char) <= 0xE0FFF  # tag characters and the supplementary selectors
    )


@functools.cache
def invisible_characters() -> re.Pattern[str]:
    """Every invisible character, as one regex class of code point ranges (built once: a scan
    of all code points)."""
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if is_invisible(chr(code)):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    spans = (f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return re.compile(f"[{''.join(spans)}]")


def label(char: str) -> str:
    return LABELS.get(char, f"U+{ord(char):04X}")


def mark_invisible(char: str) -> str:
    """An invisible character kept as is but isolated (a bidi control acts on nothing around
    it), its label shown before it by CSS (`.invisible-char::before`, so copied text stays
    exact) and its name in the tooltip."""
    name = unicodedata.name(char, f"U+{ord(char):04X}")
    return (
        f'<span class="invisible-char" data-label="{label(char)}" title="{name}">'
        f"{html.escape(char)}</span>"
    )


EMPTY = '<p class="empty-answer"><em>(empty answer)</em></p>'


def blank_note(text: str) -> str:
    """What a card shows for an answer with nothing visible in it."""
    if not text:
        return EMPTY
    return f'<p class="empty-answer"><em>(empty answer: {len(text)} blank characters)</em></p>'


def render_raw(text: str) -> str:
    """The exact characters, escaped, in a preformatted block (the "show raw text" view), with
    the invisible ones labelled."""
    body = invisible_characters().sub(lambda m: mark_invisible(m[0]), html.escape(text))
    note = blank_note(text) if not text.strip() else ""
    return f'{note}<pre class="raw-text">{body}</pre>'


def render_text(text: str, raw: bool = False) -> str:
    if raw:
        return render_raw(text)
    if not invisible_characters().sub("", text).strip():
        return blank_note(text)
    return render_markdown(text)


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
