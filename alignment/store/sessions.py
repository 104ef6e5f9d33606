"""The ranking app's signed-in sessions and the database's own secret, kept in the database so
every app process on it shares them and a restart keeps everyone signed in.

A session is stored under a keyed hash (HMAC-SHA256 with the secret) of its cookie token, never
the token itself: someone who reads the database cannot sign in with what they read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import Connection, text

SESSION_DAYS = 30  # a sign-in lasts this long, across restarts, unless signed out


def database_secret(conn: Connection) -> str:
    """The database's random secret, made on first use (call inside a write transaction, so
    two processes starting at once agree on one)."""
    conn.execute(
        text(
            "INSERT INTO app_settings (name, value) VALUES ('secret', :value) "
            "ON CONFLICT (name) DO NOTHING"
        ),
        {"value": secrets.token_hex(32)},
    )
    return conn.execute(text("SELECT value FROM app_settings WHERE name = 'secret'")).scalar_one()


def token_hash(secret: str, token: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def open_session(conn: Connection, hashed: str, name: str, now: float) -> None:
    conn.execute(
        text(
            "INSERT INTO sessions (token_hash, name, created_at) VALUES (:h, :name, :now) "
            "ON CONFLICT (token_hash) DO UPDATE SET name = excluded.name"
        ),
        {"h": hashed, "name": name, "now": now},
    )


def session_name(conn: Connection, hashed: str, since: float) -> str | None:
    """Who signed in with this session, if it was opened at `since` or later."""
    return conn.execute(
        text("SELECT name FROM sessions WHERE token_hash = :h AND created_at >= :since"),
        {"h": hashed, "since": since},
    ).scalar_one_or_none()


def end_session(conn: Connection, hashed: str) -> None:
    conn.execute(text("DELETE FROM sessions WHERE token_hash = :h"), {"h": hashed})


def all_sessions(conn: Connection) -> dict[str, str]:
    """{token hash: name} of every open session."""
    return dict(conn.execute(text("SELECT token_hash, name FROM sessions")).all())
