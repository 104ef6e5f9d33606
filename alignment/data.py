"""Reading data files and turning rows into training examples, with errors that name file and line.

Every row keeps its origin ("file:line" for JSON Lines, "file row N" for parquet and CSV,
"dataset[split] row N" for datasets; N counts from 0, as `dataset[N]`) so a bad row is reported where
the user can fix it. Chat conversations are the common currency: other formats are converted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alignment.config import DataSource, DataSpec
from alignment.errors import DataError
from alignment.tokens import Messages

ROLES = ("system", "user", "assistant")


# Single files `datasets` reads by builder; JSON and JSON Lines are read here, line by line, so a
# bad row is named by its line and a file may mix row formats whose columns differ in type.
TABULAR_BUILDERS = {".parquet": "parquet", ".csv": "csv"}
JSON_SUFFIXES = (".jsonl", ".json")


def as_source(spec: DataSpec) -> DataSource:
    """A recipe's `data` value, a path or name string or a mapping, as a DataSource."""
    return spec if isinstance(spec, DataSource) else DataSource(path=spec)


def read_rows(spec: DataSpec, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (origin, row) for each row of a local file, a local dataset directory or a Hub
    dataset; `split` is read unless the spec names its own."""
    source = as_source(spec)
    path = Path(source.path)
    if path.suffix in (*JSON_SUFFIXES, *TABULAR_BUILDERS) or path.is_file():
        yield from _read_file(source, path)
    else:
        yield from _read_dataset(source, source.split or split)


def _read_file(source: DataSource, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    builder = TABULAR_BUILDERS.get(path.suffix)
    given = [key for key in ("subset", "revision", "data_files") if getattr(source, key)]
    if builder is None and source.split:
        given.append("split")
    if given:
        raise DataError(
            f"{path}: {', '.join(given)} applies to a dataset directory or Hub dataset, not to a "
            "single file (parquet and CSV files take a split slice such as train[:100])"
        )
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    if builder is None:
        yield from _read_json(path)
        return
    rows = _load_dataset(
        f"{path}: cannot read it as {builder}",
        builder,
        data_files=str(path),
        split=source.split or "train",
        streaming=source.streaming,
    )
    for index, row in enumerate(rows):
        yield f"{path} row {index}", _present(row)


def _read_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
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
    b"PK\x03\x04": "it looks like a zip archive or spreadsheet; export the rows as CSV",
    b"PAR1": "it looks like a Parquet file; name it .parquet",
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


def _read_dataset(source: DataSource, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    subset = f" {source.subset}" if source.subset else ""
    rows = _load_dataset(
        f"{source.path!r} is not a local .jsonl/.json/.parquet/.csv file, and as a dataset "
        "directory or Hub dataset it cannot be read",
        source.path,
        name=source.subset,
        revision=source.revision,
        data_files=source.data_files,
        split=split,
        streaming=source.streaming,
    )
    for index, row in enumerate(rows):
        yield f"{source.path}{subset}[{split}] row {index}", _present(row)


def _load_dataset(failure: str, path: str, **options: Any) -> Iterable[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(path, **options)
    except Exception as err:  # datasets raises many types; all mean "cannot read it"
        raise DataError(f"{failure} ({type(err).__name__}: {err})") from None


def _present(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its empty columns: columnar data gives every row every column, and a value
    missing from a row reads as an absent key, as in JSON rows."""
    return {key: value for key, value in row.items() if value is not None}


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


# ShareGPT's speakers (`from`) as chat roles.
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def _sharegpt_turns(origin: str, conversations: Any) -> Messages:
    if not isinstance(conversations, list) or not conversations:
        raise DataError(
            f"{origin}: `conversations` must be a non-empty list of {{from, value}} objects"
        )
    messages = []
    for turn, message in enumerate(conversations):
        speaker = message.get("from") if isinstance(message, dict) else None
        if speaker not in SHAREGPT_ROLES:
            raise DataError(
                f"{origin}: conversations[{turn}] has `from` {speaker!r}; expected one of "
                f"{', '.join(SHAREGPT_ROLES)}"
            )
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": message.get("value")})
    return messages


def chat_turns(origin: str, row: dict[str, Any]) -> Any:
    """The chat turns of a `messages` row or a ShareGPT `conversations` row, else None."""
    if "messages" in row:
        return row["messages"]
    if "conversations" in row:
        return _sharegpt_turns(origin, row["conversations"])
    return None


def row_to_conversation(origin: str, row: dict[str, Any]) -> Messages:
    """Any supported SFT row format as one chat conversation ending in an assistant turn."""
    if (turns := chat_turns(origin, row)) is not None:
        messages = turns
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
            "`conversations` (ShareGPT), `prompt`+`completion`, `instruction`(+`input`)+`output`, "
            "or `text`"
        )
    messages = check_messages(origin, messages)
    while messages[-1]["role"] != "assistant":  # trailing user turns have no answer to learn
        messages.pop()
    return messages


def _is_text_row(row: dict[str, Any]) -> bool:
    conversational = ("messages", "conversations", "prompt", "instruction")
    return "text" in row and not any(key in row for key in conversational)


def sft_examples(
    source: DataSpec, split: str = "train", assistant_only_loss: bool = True
) -> list[dict]:
    """Rows for TRL's SFTTrainer.

    With assistant-only loss, a conversation with n assistant turns becomes n conversational
    prompt/completion examples (each turn with its context), so every assistant turn is trained
    whatever the chat template, without needing `{% generation %}` markers in it. Plain `text`
    rows are trained whole, as TRL's language-modelling rows; a source holds one kind or the other.
    """
    examples = []
    first: tuple[str, str] | None = None  # the kind of the first row, and where it is
    for origin, row in read_rows(source, split):
        kind = "plain text" if _is_text_row(row) else "a conversation"
        first = first or (kind, origin)
        if kind != first[0]:
            raise DataError(
                f"{origin} is {kind} but {first[1]} is {first[0]}; SFT data (each of train and "
                "held-out) must be all `text` rows or all chat rows"
            )
        if kind == "plain text":
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise DataError(f"{origin}: `text` is empty or not text")
            examples.append({"text": row["text"]})
            continue
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


def read_prompts(source: DataSpec, split: str = "train") -> list[tuple[str, Messages]]:
    """Prompts for sampling: rows with `prompt` (text or messages), or `messages` or ShareGPT
    `conversations` ending in a user turn."""
    prompts = []
    for origin, row in read_rows(source, split):
        if "prompt" in row:
            messages = _as_messages(origin, row["prompt"], "user", "prompt")
        elif (turns := chat_turns(origin, row)) is not None:
            messages = turns
        else:
            raise DataError(
                f"{origin}: expected a `prompt` (text or chat messages), `messages` or "
                f"`conversations`; got keys {sorted(row)}"
            )
        messages = check_turns(origin, messages)
        if messages[-1]["role"] != "user":
            raise DataError(f"{origin}: a prompt must end with a user message")
        prompts.append((origin, messages))
    if not prompts:
        raise DataError(f"{source}: no prompts found")
    return prompts
