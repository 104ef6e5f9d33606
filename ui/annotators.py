"""The annotators file: who may sign in to the ranking app, with which role and password hash.

    # annotators.yaml (written by `align annotators add`)
    annotators:
      alice:
        role: annotator
        password: scrypt$16384$8$1$<salt>$<hash>
      carol:
        role: admin
        password: scrypt$16384$8$1$<salt>$<hash>

Passwords are never stored: only a salted scrypt hash (stdlib hashlib), checked in constant time.
Errors name the file and line. No gradio import here, so the CLI can manage the file without it.

Names are normalised, not refused: surrounding spaces are dropped (Gradio's sign-in form strips
them before any of our code sees the name, so the CLI does the same), the text is put in Unicode
NFKC form (a full-width or decomposed look-alike is the same name), and names are compared without
case (phone keyboards capitalise the first letter). So " Alice " signs in as the `alice` of the
file, and a file cannot list two names that compare equal.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignment.errors import DataError

log = logging.getLogger(__name__)
ROLES = ("annotator", "admin")
NAME_PATTERN = re.compile(r"^[\w.@-]{1,64}$")
MIN_PASSWORD = 8
# scrypt cost: about 16 MiB and tens of milliseconds per check, paid once per sign-in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class Annotator:
    name: str
    role: str
    password_hash: str
    line: int  # where the entry starts in the file (1-based), for error messages


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, n, r, p, salt, key = encoded.split("$")
    if scheme != "scrypt":
        raise ValueError(f"unknown scheme {scheme!r}")
    return int(n), int(r), int(p), base64.b64decode(salt), base64.b64decode(key)


def verify_password(password: str, encoded: str) -> bool:
    try:
        n, r, p, salt, key = _parse_hash(encoded)
    except ValueError:
        return False
    given = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=2**27
    )
    return hmac.compare_digest(given, key)


def canonical_name(name: str) -> str:
    """The name as it is written to the file: surrounding spaces dropped, NFKC form, case kept;
    refused unless it is 1-64 letters, digits, '.', '_', '@' or '-'."""
    canonical = unicodedata.normalize("NFKC", (name or "").strip())
    if not NAME_PATTERN.match(canonical):
        raise DataError(
            f"annotator name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-' (no spaces)"
        )
    return canonical


def name_key(name: str) -> str:
    """What two names are compared by: the canonical spelling without case."""
    return unicodedata.normalize("NFKC", (name or "").strip()).casefold()


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise DataError(f"password too short: at least {MIN_PASSWORD} characters")
    return password


def load_annotators(path: str | Path) -> dict[str, Annotator]:
    """Read and validate the annotators file; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: annotators file not found (create it with `align annotators add`)"
        )
    text = path.read_text(encoding="utf-8")
    try:
        # compose keeps line numbers, so errors can point at the entry at fault.
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DataError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise DataError(f"{path}:{root.start_mark.line + 1}: expected a mapping with `annotators:`")
    entries = None
    for key, value in root.value:
        if key.value != "annotators":
            raise DataError(
                f"{path}:{key.start_mark.line + 1}: unknown key {key.value!r}; "
                "expected only `annotators`"
            )
        entries = value
    if entries is None or (isinstance(entries, yaml.ScalarNode) and entries.value in ("", "~")):
        return {}
    if not isinstance(entries, yaml.MappingNode):
        raise DataError(
            f"{path}:{entries.start_mark.line + 1}: `annotators` must map names to "
            "{role, password}"
        )
    annotators: dict[str, Annotator] = {}
    for key, value in entries.value:
        line = key.start_mark.line + 1
        name = key.value
        where = f"{path}:{line}: annotator {name!r}"
        if not NAME_PATTERN.match(str(name)):
            raise DataError(f"{where}: names use 1-64 letters, digits, '.', '_', '@' or '-'")
        if unicodedata.normalize("NFKC", name) != name:
            raise DataError(
                f"{where}: write it as {unicodedata.normalize('NFKC', name)!r} (Unicode NFKC form)"
            )
        same = next((a for a in annotators.values() if name_key(a.name) == name_key(name)), None)
        if same is not None:
            raise DataError(
                f"{where}: listed twice (first at line {same.line} as {same.name!r}; "
                "names ignore case)"
            )
        if not isinstance(value, yaml.MappingNode):
            raise DataError(f"{where}: expected `role` and `password` under the name")
        fields: dict[str, str] = {}
        for field_key, field_value in value.value:
            field_line = field_key.start_mark.line + 1
            if field_key.value not in ("role", "password"):
                raise DataError(
                    f"{path}:{field_line}: annotator {name!r}: unknown key {field_key.value!r}; "
                    "expected role, password"
                )
            if not isinstance(field_value, yaml.ScalarNode):
                raise DataError(
                    f"{path}:{field_line}: annotator {name!r}: {field_key.value} must be text"
                )
            fields[field_key.value] = field_value.value
        role = fields.get("role", "annotator")
        if role not in ROLES:
            raise DataError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        password_hash = fields.get("password")
        if not password_hash:
            raise DataError(f"{where}: missing `password` (a hash from `align annotators add`)")
        try:
            _parse_hash(password_hash)
        except (ValueError, TypeError):
            raise DataError(
                f"{where}: `password` is not a scrypt hash; never put a plain password here, "
                "set it with `align annotators add NAME --replace`"
            ) from None
        annotators[name] = Annotator(name, role, password_hash, line)
    return annotators


def save_annotators(path: str | Path, annotators: dict[str, Annotator]) -> None:
    """Write the file atomically (a crash never leaves it half-written), readable by owner only."""
    path = Path(path)
    body = {
        "annotators": {
            a.name: {"role": a.role, "password": a.password_hash} for a in annotators.values()
        }
    }
    text = (
        "# Annotators of the ranking app (`align ui`). Passwords are scrypt hashes; add or\n"
        "# change entries with `align annotators add NAME --file THIS_FILE [--role admin]`.\n"
        + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)
    )
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


def find_annotator(annotators: dict[str, Annotator], name: str) -> Annotator | None:
    """The entry whose name compares equal to `name` (see the module docstring)."""
    key = name_key(name)
    return next((a for a in annotators.values() if name_key(a.name) == key), None)


def add_annotator(
    path: str | Path,
    name: str,
    password: str,
    role: str | None = None,
    replace: bool = False,
) -> Annotator:
    """Add (or with `replace`, update) an entry. role None: annotator, or the existing role.
    An existing entry keeps its spelling: the store knows the annotator by it."""
    path = Path(path)
    name = canonical_name(name)
    check_password(password)
    if role is not None and role not in ROLES:
        raise DataError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    annotators = load_annotators(path) if path.exists() else {}
    existing = find_annotator(annotators, name)
    if existing is not None and not replace:
        raise DataError(
            f"{path}:{existing.line}: annotator {existing.name!r} already exists; "
            "pass --replace to set a new password or role"
        )
    if existing is not None:
        name = existing.name
    role = role or (existing.role if existing else "annotator")
    entry = Annotator(name, role, hash_password(password), existing.line if existing else 0)
    annotators[name] = entry
    save_annotators(path, annotators)
    return entry


def remove_annotator(path: str | Path, name: str) -> Annotator:
    """Take an entry out of the file, so they can no longer sign in (a running app notices at
    their next request); their rankings stay in the database."""
    path = Path(path)
    annotators = load_annotators(path)
    entry = find_annotator(annotators, name)
    if entry is None:
        known = ", ".join(sorted(annotators)) or "none"
        raise DataError(f"{path}: no annotator {name.strip()!r} (listed: {known})")
    del annotators[entry.name]
    save_annotators(path, annotators)
    return entry


class AnnotatorRegistry:
    """The annotators file as the running app sees it: re-read when it changes on disk, so
    `align annotators add` takes effect without a restart."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._annotators = load_annotators(self.path)  # fail fast at start-up on a bad file
        stat = self.path.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        self._dummy = hash_password(secrets.token_hex(8))

    def all(self) -> dict[str, Annotator]:
        with self._lock:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    self._stamp = stamp  # a broken file is reported once, not on every request
                    self._annotators = load_annotators(self.path)
            except (OSError, DataError) as err:
                # A broken edit keeps the last good list rather than locking everyone out.
                log.error("%s; still using the annotators read before", err)
            return self._annotators

    def get(self, name: str | None) -> Annotator | None:
        """The entry `name` signs in as (compared as in the module docstring)."""
        return find_annotator(self.all(), name) if name else None

    def authenticate(self, name: str, password: str) -> bool:
        annotator = self.get(name)
        # Unknown names still pay for one scrypt check, so timing does not reveal who exists.
        ok = verify_password(password, annotator.password_hash if annotator else self._dummy)
        return ok and annotator is not None
