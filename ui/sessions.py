"""Signed-in sessions kept in the ranking database instead of Gradio's memory, so a restarted app
keeps everyone signed in and several app processes on one database (PostgreSQL) accept each
other's sessions.

Gradio keeps sessions in `app.tokens`, a dict of cookie token -> name, and names the cookie after
a random per-process `app.cookie_id`. `install` replaces both before the app serves a request:
`SessionTokens` is that dict, stored in the database under a keyed hash of the token, and the
cookie is named after the database's secret. No gradio import here.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from alignment.store import Store


class StoredKey(str):
    """A session as iteration lists it: its stored hash. Gradio's sign-out walks the keys to end
    all of a user's sessions; a cookie's token is a plain str, never one of these, so a client
    cannot present a hash as a token."""


class SessionTokens(MutableMapping[str, str]):
    """Gradio's token -> name dict, in the store (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _hash(self, token: str) -> str:
        return str(token) if isinstance(token, StoredKey) else self.store.session_hash(token)

    def __getitem__(self, token: str) -> str:
        if not isinstance(token, str):  # no cookie: Gradio asks with None
            raise KeyError(token)
        name = self.store.session_name(self._hash(token))
        if name is None:
            raise KeyError(token)
        return name

    def __setitem__(self, token: str, name: str) -> None:
        self.store.open_session(self._hash(token), name)

    def __delitem__(self, token: str) -> None:
        self.store.end_session(self._hash(token))

    def __iter__(self) -> Iterator[str]:
        return iter([StoredKey(hashed) for hashed in self.store.sessions()])

    def __len__(self) -> int:
        return len(self.store.sessions())


def install(app: Any, store: Store) -> None:
    """Make Gradio's app keep its sessions in `store`, under a cookie name of the database's."""
    app.tokens = SessionTokens(store)
    app.cookie_id = store.cookie_name_suffix()
