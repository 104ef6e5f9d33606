"""Limits on failed sign-ins, per name and per client, so a password cannot be guessed at speed.

A name with `per_name` failures within `window_seconds` is refused until the oldest of them leaves
the window; so is a client (an IP address) with `per_client` failures, whatever names it tried. A
refused attempt is not checked at all, so it also costs no scrypt time. A successful sign-in
clears the name's failures but not the client's: otherwise signing in to one's own account would
reset the count between guesses at others. No gradio import here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from .annotators import name_key

PER_NAME = 5
PER_CLIENT = 20
WINDOW_SECONDS = 15 * 60.0
# Past this many tracked keys, keys whose failures have all left the window are dropped.
PRUNE_ABOVE = 1024


def wait_text(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


class SignInLimiter:
    """Failed sign-ins over a sliding window (see the module docstring). Thread-safe."""

    def __init__(
        self,
        per_name: int = PER_NAME,
        per_client: int = PER_CLIENT,
        window_seconds: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_name, self.per_client, self.window = per_name, per_client, window_seconds
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        times = self._failures.get(key)
        if times is None or len(times) < limit:
            return 0.0
        return max(0.0, times[-limit] + self.window - now)

    def refusal(self, name: str, client: str) -> str | None:
        """Why this attempt is refused without being checked, or None to let it through."""
        now = self.clock()
        with self._lock:
            name_wait = self._wait(("name", name_key(name)), self.per_name, now)
            client_wait = self._wait(("client", client), self.per_client, now)
        if name_wait:
            return (
                f"Too many failed sign-ins for {name.strip()[:64]!r}. Wait {wait_text(name_wait)}, "
                "then try again, or ask your admin to reset your password."
            )
        if client_wait:
            return (
                "Too many failed sign-ins from this address. "
                f"Wait {wait_text(client_wait)}, then try again."
            )
        return None

    def failed(self, name: str, client: str) -> None:
        now = self.clock()
        with self._lock:
            for key, limit in (
                (("name", name_key(name)), self.per_name),
                (("client", client), self.per_client),
            ):
                # Only the newest `limit` failures decide a refusal.
                self._failures.setdefault(key, deque(maxlen=limit)).append(now)
            if len(self._failures) > PRUNE_ABOVE:
                self._failures = {
                    key: times
                    for key, times in self._failures.items()
                    if times[-1] + self.window > now
                }

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(("name", name_key(name)), None)
