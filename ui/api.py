"""The JSON API for scripts: `/next`, `/submit`, `/skip`, `/undo`, `/progress`, `/admin_stats`,
callable with gradio_client. Each endpoint is one RankingService call with a plain-JSON answer;
a refusal reaches the client as its message."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from alignment.errors import AlignmentError
from alignment.store import Lease

from .service import RankingService


def lease_dict(lease: Lease | None) -> dict[str, Any] | None:
    """A lease as the API returns it (None when the queue is empty)."""
    if lease is None:
        return None
    return {
        "token": lease.token,
        "prompt_id": lease.prompt_id,
        "prompt": lease.messages,
        "answers": lease.texts,
        "k": len(lease.texts),
        "expires_at": lease.expires_at,
        "previous_ranks": lease.previous_ranks,
    }


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with AlignmentError turned into gr.Error, which clients see as the message."""

    @functools.wraps(fn)  # gradio reads the signature (types, gr.Request) through __wrapped__
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except AlignmentError as err:
            raise gr.Error(str(err), print_exception=False) from None

    return run


class JsonApi:
    """The endpoints, each a method named after its API name (see `endpoints`)."""

    def __init__(self, service: RankingService) -> None:
        self.service = service

    def endpoints(self) -> dict[str, Callable[..., Any]]:
        """API name -> guarded endpoint, for gr.api."""
        names = ("next", "submit", "skip", "undo", "progress", "admin_stats")
        return {name: guarded(getattr(self, name)) for name in names}

    def next(self, request: gr.Request) -> dict | None:
        """The prompt leased to you (or a new one): token, prompt, answers in your order."""
        name, _ = self.service.user(request)
        return lease_dict(self.service.next(name))

    def submit(self, token: str, ranks: list, tie: bool, request: gr.Request) -> dict:
        """Rank the leased prompt's answers (ranks in the order given by /next); returns the
        ranking id and your next prompt."""
        name, _ = self.service.user(request)
        ranking_id, lease = self.service.submit(name, token, list(ranks), bool(tie))
        return {"ranking_id": ranking_id, "next": lease_dict(lease)}

    def skip(self, token: str, reason: str, request: gr.Request) -> dict:
        """Skip the leased prompt with a reason; returns the skip id and your next prompt."""
        name, _ = self.service.user(request)
        skip_id, lease = self.service.skip(name, token, reason)
        return {"skip_id": skip_id, "next": lease_dict(lease)}

    def undo(self, request: gr.Request) -> dict | None:
        """Retract your last submission; its prompt is leased back to you."""
        name, _ = self.service.user(request)
        undone = self.service.undo(name)
        if undone is None:
            return None
        return {"undone": undone.kind, "id": undone.row_id, "next": lease_dict(undone.lease)}

    def progress(self, request: gr.Request) -> dict:
        """Your submissions today and prompts left in your queue."""
        name, _ = self.service.user(request)
        done, left = self.service.progress(name)
        return {"annotator": name, "done_today": done, "left": left}

    def admin_stats(self, request: gr.Request) -> dict:
        """Admins: progress per annotator and agreement."""
        _, role = self.service.user(request)
        return self.service.admin_stats(role)
