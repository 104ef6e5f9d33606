"""Reading data files and turning rows into training examples, with errors that name file and line.

Every row keeps its origin ("file:line" or "dataset[split] row N") so a bad row is reported where
the user can fix it. Chat conversations are the common currency: other formats are converted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignment.errors import DataError
from alignment.tokens import Messages

ROLES = ("system", "user", "assistant")


def is_local(source: str) -> bool:
    return Path(source).suffix in (".jsonl", ".json") or Path(source).exists()


def read_rows(source: str, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (origin, row) for each row of a local .jsonl/.json file or a `datasets` split."""
    if not is_local(source):
        yield from _read_dataset(source, split)
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected one JSON object per line")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        for index, row in enumerate(rows):
            yield _checked_object(f"{path}[{index}]", row)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})"
            ) from None
        yield _checked_object(f"{path}:{number}", row)


# What a file that is not UTF-8 text most likely is, by its first bytes, and what to do about it.
_BINARY_SIGNATURES = {
    b"\x1f\x8b": "it looks like a gzip file; decompress it first",
    b"PK\x03\x04": "it looks like a zip archive or spreadsheet; export the rows as JSON Lines",
    b"PAR1": "it looks like a Parquet file; convert it to JSON Lines",
    b"SQLite format 3\x00": "it looks like an SQLite database; export rankings with `align export`",
    b"\xff\xfe": "it looks like UTF-16 text; save it as UTF-8",
    b"\xfe\xff": "it looks like UTF-16 text; save it as UTF-8",
}


def read_text(path: Path) -> str:
    """A user's text file decoded as UTF-8; a binary or otherwise encoded file is a DataError
    naming the file, the line and the byte offset of the first byte that is not UTF-8 text."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = err.start
    else:
        bad = raw.find(b"\x00")  # valid UTF-8, but only binary files and UTF-16 hold NUL bytes
        if bad < 0:
            return text.removeprefix("\ufeff")  # the byte-order mark some editors write
    hint = next(
        (hint for magic, hint in _BINARY_SIGNATURES.items() if raw.startswith(magic)),
        "expected UTF-8 text",
    )
    line = raw.count(b"\n", 0, bad) + 1
    raise DataError(
        f"{path}:{line}: not a UTF-8 text file (byte 0x{raw[bad]:02x} at offset {bad}); {hint}"
    )


def _checked_object(origin: str, row: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(row, dict):
        raise DataError(f"{origin}: expected a JSON object, got {type(row).__name__}")
    return origin, row


def _read_dataset(name: str, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types; all mean "cannot read it"
        raise DataError(
            f"{name!r} is neither a local .jsonl/.json file nor a readable `datasets` name ({err})"
        ) from None
    for index, row in enumerate(dataset):
        yield f"{name}[{split}] row {index}", row


def check_turns(origin: str, messages: Any) -> Messages:
    """Validate chat turns: a non-empty list of {role, content} with text, system only first."""
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{origin}: `messages` must be a non-empty list of {{role, content}} objects"
        )
    for turn, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{origin}: message {turn} must be an object with `role` and `content`")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{origin}: message {turn} has role {role!r}; expected one of {ROLES}")
        if role == "system" and turn != 0:
            raise DataError(f"{origin}: message {turn}: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{origin}: message {turn} ({role}) has empty or non-text content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_messages(origin: str, messages: Any) -> Messages:
    """Validate a conversation to learn from: well-formed turns including an assistant turn."""
    messages = check_turns(origin, messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{origin}: conversation has no assistant turn to learn from")
    return messages


def _as_messages(origin: str, value: Any, role: str, key: str) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{origin}: `{key}` is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise DataError(f"{origin}: `{key}` must be text or a list of chat messages")


def row_to_conversation(origin: str, row: dict[str, Any]) -> Messages:
    """Any supported SFT row format as one chat conversation ending in an assistant turn."""
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row and "completion" in row:
        messages = _as_messages(origin, row["prompt"], "user", "prompt") + _as_messages(
            origin, row["completion"], "assistant", "completion"
        )
    elif "instruction" in row and "output" in row:
        extra = row.get("input") or ""
        instruction = (
            f"{row['instruction']}\n\n{extra}" if str(extra).strip() else row["instruction"]
        )
        messages = _as_messages(origin, instruction, "user", "instruction") + _as_messages(
            origin, row["output"], "assistant", "output"
        )
    else:
        raise DataError(
            f"{origin}: unknown row format with keys {sorted(row)}; expected `messages`, "
            "`prompt`+`completion`, or `instruction`(+`input`)+`output`"
        )
    messages = check_messages(origin, messages)
    while messages[-1]["role"] != "assistant":  # trailing user turns have no answer to learn
        messages.pop()
    return messages


def sft_examples(source: str, split: str = "train", assistant_only_loss: bool = True) -> list[dict]:
    """Rows for TRL's SFTTrainer.

    With assistant-only loss, a conversation with n assistant turns becomes n conversational
    prompt/completion examples (each turn with its context), so every assistant turn is trained
    whatever the chat template, without needing `{% generation %}` markers in it.
    """
    examples = []
    for origin, row in read_rows(source, split):
        messages = row_to_conversation(origin, row)
        if not assistant_only_loss:
            examples.append({"messages": messages})
            continue
        for turn, message in enumerate(messages):
            if message["role"] == "assistant" and turn > 0:
                examples.append({"prompt": messages[:turn], "completion": [message]})
    if not examples:
        raise DataError(f"{source}: no training examples found")
    return examples


def read_prompts(source: str, split: str = "train") -> list[tuple[str, Messages]]:
    """Prompts for sampling: rows with `prompt` (text or messages) or `messages` ending in a user turn."""
    prompts = []
    for origin, row in read_rows(source, split):
        if "prompt" in row:
            messages = _as_messages(origin, row["prompt"], "user", "prompt")
        elif "messages" in row:
            messages = row["messages"]
        else:
            raise DataError(
                f"{origin}: expected a `prompt` (text or chat messages); got keys {sorted(row)}"
            )
        messages = check_turns(origin, messages)
        if messages[-1]["role"] != "user":
            raise DataError(f"{origin}: a prompt must end with a user message")
        prompts.append((origin, messages))
    if not prompts:
        raise DataError(f"{source}: no prompts found")
    return prompts
