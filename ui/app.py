"""The ranking app (Gradio Blocks): annotators rank K sampled answers per prompt, best first.

Launched by `align ui`. This module puts the page together and serves it; the parts live apart:
`service` (RankingService: every action, page or API, goes through it), `views` (layout, look,
keyboard shortcuts), `handlers` (the page's events), `api` (the JSON API for scripts), `guards`
(sign-in limits, downloads removed once fetched) and `exports` (where downloads wait).

Sessions live in the database (`sessions`): a restart keeps everyone signed in, and several
`align ui` processes on one PostgreSQL database accept each other's sessions.

Private by default: the app connects to nothing (no analytics, version check or share link);
the API is listed nowhere, not even on the sign-in page (scripts find it in ui/README.md); no
OpenAPI schema, monitoring or run history; exports wait in a folder of the app's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from alignment.errors import AlignmentError
from alignment.store import Store

from .annotators import AnnotatorRegistry, canonical_name
from .api import JsonApi
from .guards import DownloadOnce, SignInGuard
from .handlers import PageHandlers
from .service import RankingService
from .sessions import install as keep_sessions_in
from .signin import SignInLimiter
from .views import (
    CSS,
    DEFAULT_GUIDELINES,
    SCROLL_TO_PROMPT_JS,
    SHORTCUTS_JS,
    SIGN_OUT_JS,
    THEME_FONTS,
    build_page,
)


def build_app(
    service: RankingService, guidelines: str = DEFAULT_GUIDELINES, slots: int | None = None
) -> gr.Blocks:
    """The Blocks app. `slots` is the most answers one prompt can show (default: what the store
    holds, at least 8)."""
    slots = max(8, service.store.max_candidates(), slots or 0)
    with gr.Blocks(title="Rank answers", analytics_enabled=False) as demo:
        page = build_page(guidelines, slots)
        handlers = PageHandlers(service, page.ranking)
        view, admin, form = page.ranking, page.admin, page.ranking.form
        admin_outputs = [admin.summary, admin.people, admin.agreement]
        private = {"api_visibility": "private"}
        demo.load(
            handlers.on_load, [view.raw], [page.whoami, page.sign_out, admin.tab, *form], **private
        )
        for control in (*view.ranks, view.tie):
            # `input`, not `change`: only what the annotator clicks, not a new prompt's values.
            control.input(
                handlers.on_order,
                {view.state, *view.ranks, view.tie},
                view.order,
                show_progress="hidden",
                trigger_mode="always_last",
                **private,
            )
        view.shown.change(None, js=SCROLL_TO_PROMPT_JS, **private)
        page.sign_out.click(handlers.on_sign_out, **private).then(None, js=SIGN_OUT_JS, **private)
        view.submit.click(
            handlers.on_submit, {view.state, *view.ranks, view.tie, view.raw}, form, **private
        )
        view.skip.click(
            handlers.on_skip,
            [view.state, view.skip_reason, view.skip_note, view.raw],
            [*form, view.skip_reason, view.skip_note],
            **private,
        )
        for verdict, button in view.verdicts.items():
            button.click(handlers.verdict_handler(verdict), [view.state, view.raw], form, **private)
        view.undo.click(handlers.on_undo, [view.raw], form, **private)
        for button in (view.refresh, view.next_prompt):
            button.click(handlers.on_refresh, [view.raw], form, **private)
        view.raw.change(
            handlers.on_raw,
            [view.state, view.raw],
            [view.prompt, *view.answers],
            show_progress="hidden",
            **private,
        )
        admin.tab.select(handlers.on_admin, None, admin_outputs, **private)
        admin.refresh.click(handlers.on_admin, None, admin_outputs, **private)
        admin.export.click(
            handlers.on_export,
            [admin.export_format, admin.export_aggregate, admin.export_min, admin.export_ties],
            [admin.export_message, admin.export_file],
            **private,
        )
        # Gradio would copy the file to its shared cache; in the export folder it stays put.
        admin.export_file.GRADIO_CACHE = str(service.exports.root)
        for name, endpoint in JsonApi(service).endpoints().items():
            # Callable by signed-in scripts, but listed nowhere (not even on the sign-in page).
            gr.api(endpoint, api_name=name, api_visibility="undocumented")
    return demo


def load_guidelines(path: str | Path | None) -> str:
    if path is None:
        return DEFAULT_GUIDELINES
    path = Path(path)
    if not path.is_file():
        raise AlignmentError(f"{path}: guidelines file not found")
    return path.read_text(encoding="utf-8")


def launch(
    db: str | Path,
    annotators: str | Path | None = None,
    single_user: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    per_prompt: int = 1,
    lease_seconds: float = 600.0,
    guidelines: str | Path | None = None,
    block: bool = True,
) -> tuple[gr.Blocks, RankingService]:
    """Open the store, build the app and serve it (in the background when block=False)."""
    if (annotators is None) == (single_user is None):
        raise AlignmentError("give either --annotators FILE or --single-user NAME")
    if per_prompt < 1:
        raise AlignmentError(f"--per-prompt {per_prompt}: must be 1 or more")
    registry = AnnotatorRegistry(annotators) if annotators is not None else None
    if registry is not None and not registry.all():
        raise AlignmentError(
            f"{annotators}: no annotators yet; add one with `align annotators add`"
        )
    if single_user is not None:
        single_user = canonical_name(single_user)
    store = Store(db)
    service = RankingService(store, registry, single_user, per_prompt, lease_seconds)
    limiter = SignInLimiter()
    demo = build_app(service, load_guidelines(guidelines))
    demo.queue(default_concurrency_limit=8)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=service.authenticate if registry is not None else None,
        auth_message=(
            "Sign in with the name and password your admin gave you. After "
            f"{limiter.per_name} wrong passwords for a name, its sign-in pauses for up to "
            f"{int(limiter.window // 60)} minutes."
        ),
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
        share=False,
        footer_links=[],
        theme=gr.themes.Default(**THEME_FONTS),
        css=CSS,
        head=SHORTCUTS_JS,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        run_history=False,
        allowed_paths=[str(service.exports.root)],
        app_kwargs=server_settings(service, limiter),
    )
    return demo, service


def server_settings(service: RankingService, limiter: SignInLimiter) -> dict[str, Any]:
    """What FastAPI gets: no schema or docs routes, the guards, sessions kept in the database
    (from before the first request), and the export folder swept at start (left by a killed app)
    and emptied at stop."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        keep_sessions_in(app, service.store)
        service.exports.sweep()
        try:
            yield
        finally:
            service.exports.close()

    return {
        "openapi_url": None,
        "docs_url": None,
        "redoc_url": None,
        "middleware": [
            Middleware(SignInGuard, limiter=limiter),
            Middleware(DownloadOnce, exports=service.exports),
        ],
        "lifespan": lifespan,
    }
