"""Where an admin's export waits to be downloaded: a folder of the app's own, beside an SQLite
database (`rankings.db-exports`, like SQLite's `rankings.db-wal`) or, for a PostgreSQL database,
in the user's cache folder (`~/.cache/alignment/exports/<database>`), readable by its owner only.

Each export gets a sub-folder with an unguessable name (its download URL is the only way to it)
and is written mode 0600. It is removed once downloaded (`guards.DownloadOnce`) or when it is
`lifetime` seconds old, whichever comes first; exports a killed app left behind are swept at the
next start. No gradio import here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from alignment.store import Store

LIFETIME_SECONDS = 10 * 60.0


class ExportFolder:
    """The app's export folder (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        lifetime: float = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root).resolve()
        self.lifetime = lifetime
        self.clock = clock  # compared with folder mtimes, so wall-clock time
        self._timers: list[threading.Timer] = []
        self._made: set[Path] = set()  # this app's sub-folders, removed when it stops
        self._lock = threading.Lock()

    @classmethod
    def beside(cls, database: str | Path, lifetime: float = LIFETIME_SECONDS) -> ExportFolder:
        database = Path(database).resolve()
        return cls(database.with_name(database.name + "-exports"), lifetime)

    @classmethod
    def for_store(cls, store: Store, lifetime: float = LIFETIME_SECONDS) -> ExportFolder:
        """Beside the SQLite file; for a database on a server, in the user's cache folder under
        the database's name (app processes on one machine share it, as they share the file's)."""
        if store.path is not None:
            return cls.beside(store.path, lifetime)
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        exports = cache / "alignment" / "exports"
        exports.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(exports / re.sub(r"[^\w.-]+", "_", store.name).strip("_")[:120], lifetime)

    def new_file(self, name: str) -> Path:
        """A path for a new export called `name`, in a fresh sub-folder; removed by `sweep` once
        `lifetime` has passed."""
        self.sweep()
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.root.chmod(0o700)  # in case an older folder was made with looser rights
        folder = self.root / secrets.token_urlsafe(16)
        folder.mkdir(mode=0o700)
        timer = threading.Timer(self.lifetime, self.sweep)
        timer.daemon = True
        timer.start()
        with self._lock:
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
            self._made.add(folder)
        return folder / name

    def owns(self, path: str | Path) -> bool:
        """Whether `path` is an export file of this folder."""
        return Path(path).resolve().parent.parent == self.root

    def remove(self, path: str | Path) -> None:
        """Remove the export at `path` with its sub-folder."""
        if self.owns(path):
            shutil.rmtree(Path(path).resolve().parent, ignore_errors=True)

    def pending(self) -> list[Path]:
        """Export files not yet downloaded or expired."""
        if not self.root.is_dir():
            return []
        return sorted(f for f in self.root.glob("*/*") if f.is_file())

    def sweep(self) -> None:
        """Remove every export older than `lifetime`, this app's or one a killed app left."""
        if not self.root.is_dir():
            return
        cutoff = self.clock() - self.lifetime
        for folder in self.root.iterdir():
            with contextlib.suppress(FileNotFoundError):  # another worker may sweep at once
                if folder.is_dir() and folder.stat().st_mtime <= cutoff:
                    shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Stop the expiry timers, remove this app's exports (their links die with it) and
        expired ones, and the folder itself if nothing is left in it."""
        with self._lock:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            made, self._made = self._made, set()
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        self.sweep()
        with contextlib.suppress(OSError):  # not empty: another app's export is pending
            self.root.rmdir()
