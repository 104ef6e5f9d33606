"""User-facing errors: the CLI prints their message (which names the file, key or row) without a
traceback. Failures of the machine rather than the input (a full disk, a read-only directory) are
described here too, as one line naming the file, from whatever exception the writing library
raised."""

from __future__ import annotations

import errno
import io
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import FrameType


class AlignmentError(Exception):
    """Bad input or a missing resource that the user can fix."""


class RecipeError(AlignmentError, ValueError):
    """A recipe or override that does not validate."""


class DataError(AlignmentError, ValueError):
    """Bad input data; the message names the file (or dataset) and the line (or row)."""


class ModelSourceError(AlignmentError, RuntimeError):
    """A model that cannot be found or loaded; the message says what to do instead."""


class RunStateError(AlignmentError):
    """The run directory is not in the state a command needs (e.g. a finished run without --resume)."""


# The file system failures a user can act on, as the one line says them.
FILE_SYSTEM_REASONS = {
    errno.ENOSPC: "disk full (No space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (an immutable file?)",
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

# Libraries that write a file without an OSError: the function and the argument naming the file.
_WRITERS = {
    ("torch.serialization", "save"): "f",
    ("safetensors.torch", "save_file"): "filename",
}
# torch's zip writer and SQLite report a failed write without its cause; the file system tells.
_CAUSE_UNSAID = (
    "unexpected pos",  # torch.save: the file is shorter than what was written to it
    "file write failed",
    "unable to open database file",
    "disk I/O error",
)
_SAID_AS = {
    "database or disk is full": errno.ENOSPC,  # SQLite
    "attempt to write a readonly database": errno.EROFS,
    **{os.strerror(code): code for code in FILE_SYSTEM_REASONS},  # torch: "strerror: ..."
}
_NEARLY_FULL = 1 << 20  # bytes free under which a failed write is put down to a full disk


def describe_file_system_failure(err: BaseException) -> tuple[str, int] | None:
    """("cannot write PATH: disk full (...)", errno) when `err`, or an exception it was raised
    from, is a full disk, an exceeded quota, a read-only file system or a refused permission;
    None for anything else."""
    for failure in _causes(err):
        path = _file_of(failure)
        code, reason = _cause(failure, path)
        if code is not None:
            verb = "read" if _is_unreadable(path) else "write"
            unnamed = "an SQLite database" if isinstance(failure, sqlite3.Error) else "a file"
            return f"cannot {verb} {path or unnamed}: {reason}", code
    return None


def _cause(failure: BaseException, path: str | None) -> tuple[int, str] | tuple[None, None]:
    code = _errno_of(failure)
    if code is None and path is not None and any(s in str(failure) for s in _CAUSE_UNSAID):
        code = _probe(Path(path))
        if code is None and "unexpected pos" in str(failure):
            return errno.ENOSPC, "the write stopped short (is the disk full?)"
    # Only a failure tied to a file counts: EPERM, or a library's words alone, may be about
    # something else (signals, ownership, a web service).
    tied_to_a_file = path is not None or (
        isinstance(failure, OSError | sqlite3.Error) and code != errno.EPERM
    )
    if code in FILE_SYSTEM_REASONS and tied_to_a_file:
        return code, FILE_SYSTEM_REASONS[code]
    return None, None


def file_in_traceback(err: BaseException) -> str | None:
    """The file the failing code was reading or writing, from the frames `err` passed through."""
    return _file_of(err, writing=False)


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _errno_of(failure: BaseException) -> int | None:
    if isinstance(failure, OSError):
        return failure.errno
    text = str(failure)
    if said := re.search(r"\(os error (\d+)\)", text):  # Rust io errors: safetensors, tokenizers
        return int(said.group(1))
    if isinstance(failure, sqlite3.Error | RuntimeError):
        return next((code for words, code in _SAID_AS.items() if words in text), None)
    return None


def _frames_innermost_first(err: BaseException) -> list[FrameType]:
    frames = []
    trace = err.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    return frames[::-1]


def _file_of(err: BaseException, writing: bool = True) -> str | None:
    if isinstance(err, OSError) and err.filename is not None:
        return os.fsdecode(err.filename)
    for frame in _frames_innermost_first(err):
        writer = (frame.f_globals.get("__name__"), frame.f_code.co_name)
        if writer in _WRITERS:
            target = frame.f_locals.get(_WRITERS[writer])
            if isinstance(target, str | os.PathLike):
                return os.fsdecode(target)
        for value in frame.f_locals.values():
            if name := _open_file_name(value, writing):
                return name
    return None


def _open_file_name(value: object, writing: bool) -> str | None:
    """The path of an open (or just closed) file object or SQLite connection, else None."""
    # An SQLAlchemy connection (the ranking store's) names its SQLite file in its engine's URL.
    url = getattr(getattr(value, "engine", None), "url", None)
    if getattr(url, "drivername", None) == "sqlite" and url.database:
        return url.database
    if isinstance(value, sqlite3.Connection):
        try:
            return next(row[2] for row in value.execute("PRAGMA database_list") if row[1] == "main")
        except (sqlite3.Error, StopIteration):
            return None
    if isinstance(value, io.IOBase):
        name, mode = getattr(value, "name", None), getattr(value, "mode", "")
        if isinstance(name, str) and (not writing or any(c in mode for c in "wax+")):
            return name
    return None


def _probe(path: Path) -> int | None:
    """Why a write under `path` fails, asked of its file system: read-only, not writable, full."""
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        stats = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(directory, os.W_OK):
        return errno.EACCES
    if stats.f_bavail * stats.f_frsize < _NEARLY_FULL:
        return errno.ENOSPC
    return None


def _is_unreadable(path: str | None) -> bool:
    return path is not None and os.path.isfile(path) and not os.access(path, os.R_OK)


class TrainingDiverged(AlignmentError):
    """NaN or inf in a loss, gradient, weight or reward; the last good checkpoint is kept."""
