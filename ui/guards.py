"""HTTP guards in front of the Gradio app: ASGI middleware that `app.launch` hands to FastAPI.

- `SignInGuard` applies `SignInLimiter` to Gradio's `POST /login`: a refused attempt gets status
  429 and a message without reaching the password check. Gradio's sign-in page only knows status
  400 ("Incorrect credentials"), so the guard also adds a small script to that page (and to no
  other) that shows the message of a 429.
- `DownloadOnce` removes an admin's export once it has been downloaded in full.

Both sit inside Gradio's own middleware (compression included), so they see plain responses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .exports import ExportFolder
from .signin import SignInLimiter

log = logging.getLogger(__name__)

MAX_SIGN_IN_BODY = 64 * 1024  # a name and a password; anything bigger is not a sign-in

SIGN_IN_SCRIPT = b"""<script>
(() => {
  const fetchBefore = window.fetch;
  window.fetch = async (resource, options) => {
    const response = await fetchBefore(resource, options);
    const address = resource instanceof Request ? resource.url : String(resource);
    if (!/\\/login\\/?$/.test(new URL(address, location.href).pathname)) { return response; }
    let box = document.getElementById("signin-message");
    if (!box) {
      box = document.createElement("p");
      box.id = "signin-message";
      box.setAttribute("role", "alert");
      box.style.color = "var(--error-text-color, #b91c1c)";
      const heading = document.querySelector("h2");
      if (heading) { heading.after(box); } else { document.body.prepend(box); }
    }
    const refusal = response.status === 429
      ? (await response.clone().json().catch(() => ({}))).detail
      : "";
    box.textContent = refusal || (response.status === 429 ? "Sign-in refused; try later." : "");
    return response;
  };
})();
</script>"""
# Gradio writes this into the page only when nobody is signed in.
SIGN_IN_PAGE_MARK = b'"auth_required":true'


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out `body` once, then whatever the client sends next."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


class StatusWatch:
    """A `send` that passes every message on, noting the response status; `before_end(status)`
    runs just before the last body message goes out."""

    def __init__(self, send: Send, before_end: Callable[[int], None] | None = None) -> None:
        self.send, self.before_end = send, before_end
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif (
            message["type"] == "http.response.body"
            and not message.get("more_body")
            and self.before_end is not None
        ):
            self.before_end(self.status)
        await self.send(message)


class SignInGuard:
    """Failed sign-ins limited per name and per client (see the module docstring)."""

    def __init__(self, app: ASGIApp, limiter: SignInLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login"):
            await self.sign_in(scope, receive, send)
        elif scope["method"] == "GET" and scope["path"] in ("", "/"):
            await self.page(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def sign_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_SIGN_IN_BODY:
                await JSONResponse({"detail": "Sign-in request too large."}, 413)(
                    scope, receive, send
                )
                return
            if not message.get("more_body", False):
                break
        form = await Request(scope, replay(body, receive)).form()
        name = str(form.get("username") or "")
        await form.close()
        client = (scope.get("client") or ("unknown",))[0]
        refusal = self.limiter.refusal(name, client)
        if refusal is not None:
            log.warning("sign-in for %r from %s refused: too many failures", name, client)
            await JSONResponse({"detail": refusal}, 429)(scope, receive, send)
            return
        watch = StatusWatch(send)
        await self.app(scope, replay(body, receive), watch)
        if watch.status == 200:
            self.limiter.succeeded(name)
        elif watch.status == 400:  # Gradio's answer to a wrong name or password
            self.limiter.failed(name, client)

    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The page, with SIGN_IN_SCRIPT added when it is the sign-in page."""
        start: Message | None = None
        body = b""

        async def hold(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body += message.get("body", b"")
            if message.get("more_body", False):
                return
            if SIGN_IN_PAGE_MARK in body:
                body = body.replace(b"</head>", SIGN_IN_SCRIPT + b"</head>", 1)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, hold)


class DownloadOnce:
    """Removes an export from `exports` once a GET has sent all of it."""

    def __init__(self, app: ASGIApp, exports: ExportFolder) -> None:
        self.app = app
        self.exports = exports

    def export_path(self, scope: Scope) -> Path | None:
        """The export a request downloads (Gradio serves files at `.../file=<path>`)."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        _, marker, path = scope["path"].partition("/file=")
        return Path(path) if marker and self.exports.owns(path) else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self.export_path(scope)
        if path is None:
            await self.app(scope, receive, send)
            return

        def remove_when_sent(status: int) -> None:
            # Every byte has been read by now; removed before the client has the last of them,
            # so once the download is complete the file is gone. A ranged (206) or refused
            # request leaves it to expire.
            if status == 200:
                self.exports.remove(path)

        watch = StatusWatch(send, remove_when_sent)
        await self.app(scope, receive, watch)
