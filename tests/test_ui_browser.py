"""End to end in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): two
annotators sign in, rank (one with a tie), skip, undo; an admin looks and exports; the database
rows and the exported pairs are then checked exactly. Waits are Playwright `expect`s on elem_ids.

A screenshot of the ranking page is written to $ARTIFACTS_DIR (default: the system temp dir's
align-artifacts/) as ranking-page.png.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Page, expect  # noqa: E402

from alignment.cli import main  # noqa: E402
from alignment.human_eval import post_pairs, verdicts  # noqa: E402
from alignment.store import Store  # noqa: E402
from tests.ranking_support import PASSWORDS, ApiSession, Serve, pair, served_apps, sql  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (see .ci/apt-packages.txt)"
)

COLOURS = ["Red.", "Blue.", "Green.", "Purple."]
XSS = (
    '<script>window.__xss = "script"; alert("xss-script")</script>\n\n'
    "<img src=x onerror=\"window.__xss = 'img'; alert('xss-img')\">\n\n"
    "![tracker](http://203.0.113.9/pixel.png)"
)
HTML_ANSWERS = [XSS, "Use **bold** with `<b>` tags.", "I can't help with that."]
UNICODE = "".join(
    f"{i}: naïve café 日本語 עברית العربية हिन्दी 🙂👩‍👩‍👧 e\u0301 𝔘𝔫𝔦 <b>&amp;</b> ${{x}} {{{{y}}}}\n"
    for i in range(400)
)
GREETINGS = [UNICODE, "Hello.", "Hi!"]
TIMEOUT = 20_000


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("browser")
    prompts = [
        ("Name a primary colour.", COLOURS),
        ("Show me some HTML.", HTML_ANSWERS),
        ("Say hello in many scripts.", GREETINGS),
    ]
    with served_apps(root) as start:
        url, _ = start(prompts, per_prompt=2)
        yield url, root / "rankings.db"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """An app of its own on a fresh database, for one test."""
    with served_apps(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watch:
    """Every request and dialog of every page, to prove nothing ran and nothing left 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.dialogs: list[str] = []

    def attach(self, page: Page) -> Page:
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        return page


def sign_in(
    browser: object,
    url: str,
    watch: Watch,
    name: str,
    password: str,
    viewport: dict[str, int] | None = None,
) -> Page:
    viewport = viewport or {"width": 1280, "height": 1300}
    page = watch.attach(browser.new_context(viewport=viewport).new_page())
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return page


def slot_texts(page: Page, k: int) -> list[str]:
    return [page.locator(f"#answer-{i} .answer-text").inner_text().strip() for i in range(k)]


def rank_by_text(page: Page, ranks: dict[str, int]) -> dict[int, int]:
    """Click each answer's rank by its text (the order on screen is the annotator's own)."""
    texts = slot_texts(page, len(ranks))
    chosen = {}
    for slot, text in enumerate(texts):
        rank = next(r for t, r in ranks.items() if text.startswith(t.rstrip(".")[:12]))
        page.locator(f"#rank-{slot}").get_by_label(str(rank), exact=True).check()
        chosen[slot] = rank
    return chosen


def expect_ranks(page: Page, chosen: dict[int, int]) -> None:
    for slot, rank in chosen.items():
        expect(page.locator(f"#rank-{slot} input[value='{rank}']")).to_be_checked()


def test_two_annotators_rank_skip_undo_and_export(app: tuple[str, Path], browser: object) -> None:
    url, db = app
    watch = Watch()

    # Wrong password and unknown annotator are refused on the sign-in form.
    page = sign_in(browser, url, watch, "alice", "not-her-password")
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible(timeout=TIMEOUT)
    page.get_by_label("username").fill("mallory")
    page.get_by_label("password").fill(PASSWORDS["alice"])
    page.get_by_role("button", name="Login").click()
    # A refused sign-in clears the name field: that is the answer to wait for.
    expect(page.get_by_label("username")).to_have_value("", timeout=TIMEOUT)
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
    page.get_by_label("username").fill("alice")
    page.get_by_label("password").fill(PASSWORDS["alice"])
    page.get_by_role("button", name="Login").click()

    # Alice: prompt 1. An empty submission is refused.
    expect(page.locator("#whoami")).to_contain_text(
        "Signed in as alice (annotator)", timeout=TIMEOUT
    )
    expect(page.locator("#prompt")).to_contain_text("Name a primary colour.")
    expect(page.locator("#progress")).to_contain_text("Done today: 0 · Left in queue: 3")
    expect(page.get_by_role("tab", name="Admin")).to_have_count(0)
    page.locator("#submit").click()
    expect(page.locator("#message")).to_contain_text(
        "Not saved. Incomplete: give every answer a rank; A, B, C, D have none."
    )
    # Equal ranks without the tie control: refused, and the form stays as it was.
    alice_ranks = {"Red.": 1, "Blue.": 2, "Green.": 2, "Purple.": 3}
    chosen = rank_by_text(page, alice_ranks)
    page.locator("#submit").click()
    expect(page.locator("#message")).to_contain_text("Tie not confirmed")
    expect_ranks(page, chosen)
    expect(page.locator("#tie input")).not_to_be_checked()
    # Keyboard: T ticks the tie control, Ctrl+Enter submits.
    page.locator("#prompt").click()
    page.keyboard.press("t")
    expect(page.locator("#tie input")).to_be_checked()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#message")).to_contain_text("Saved ranking #1. Next prompt below.")

    # Prompt 2 carries a script, an img onerror and a remote image: all shown as text.
    expect(page.locator("#prompt")).to_contain_text("Show me some HTML.")
    expect(page.locator("#progress")).to_contain_text("Done today: 1 · Left in queue: 2")
    expect(
        page.get_by_text('<script>window.__xss = "script"; alert("xss-script")</script>')
    ).to_be_visible()
    expect(page.get_by_text("<img src=x onerror=")).to_be_visible()
    answers = page.locator("[id^='answer-']")
    assert answers.locator("script, img, iframe, object").count() == 0
    page.locator("#raw input").check()  # a server round trip while the answer is on screen
    expect(page.locator("pre.raw-text").first).to_be_visible()
    assert page.evaluate("window.__xss") is None
    page.locator("#raw input").uncheck()
    expect(page.locator("pre.raw-text")).to_have_count(0)

    # Skip it with a reason.
    page.locator("#skip-reason input").click()
    page.get_by_role("option", name="The prompt is unclear or broken").click()
    page.locator("#skip").click()
    expect(page.locator("#message")).to_contain_text("Skipped (#1). Next prompt below.")
    expect(page.locator("#prompt")).to_contain_text("Say hello in many scripts.")

    # Unicode of any kind, shown intact (raw view: the exact characters).
    page.locator("#raw input").check()
    expect(page.locator("[id^='answer-'] pre.raw-text")).to_have_count(3)
    slot = next(i for i, t in enumerate(slot_texts(page, 3)) if t.startswith("0: naïve"))
    assert page.locator(f"#answer-{slot} pre.raw-text").text_content() == UNICODE
    page.locator("#raw input").uncheck()
    expect(page.locator("pre.raw-text")).to_have_count(0)

    # U undoes the skip: prompt 2 comes back. Rank it with the keyboard (letter, then digit).
    page.locator("#prompt").click()
    page.keyboard.press("u")
    expect(page.locator("#message")).to_contain_text("Undid your skip #1.")
    expect(page.locator("#prompt")).to_contain_text("Show me some HTML.")
    wanted = {"Use **bold**": 1, "<script>": 2, "I can't help": 3}
    texts = slot_texts(page, 3)
    alice_html = {}
    for i, text in enumerate(texts):
        shown = text.replace("bold", "**bold**", 1) if text.startswith("Use bold") else text
        rank = next(r for start, r in wanted.items() if shown.startswith(start))
        page.keyboard.press("abc"[i])
        page.keyboard.press(str(rank))
        alice_html[i] = rank
    expect_ranks(page, alice_html)
    page.locator("#submit").click()
    expect(page.locator("#message")).to_contain_text("Saved ranking #2. Next prompt below.")
    expect(page.locator("#prompt")).to_contain_text("Say hello in many scripts.")
    artifacts = Path(
        os.environ.get("ARTIFACTS_DIR", Path(tempfile.gettempdir()) / "align-artifacts")
    )
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "ranking-page.png"), full_page=True)

    # Bob: prompt 1 still has a free slot (2 annotators per prompt).
    bob = sign_in(browser, url, watch, "bob", PASSWORDS["bob"])
    expect(bob.locator("#prompt")).to_contain_text("Name a primary colour.", timeout=TIMEOUT)
    first = rank_by_text(bob, {"Green.": 1, "Red.": 2, "Blue.": 3, "Purple.": 4})
    bob.locator("#submit").click()
    expect(bob.locator("#message")).to_contain_text("Saved ranking #3.")
    # Undo brings his ranking back, filled in; he changes it and submits again.
    bob.locator("#undo").click()
    expect(bob.locator("#message")).to_contain_text("Undid your ranking #3.")
    expect_ranks(bob, first)
    rank_by_text(bob, {"Red.": 1, "Green.": 2, "Blue.": 3, "Purple.": 4})
    bob.locator("#submit").click()
    expect(bob.locator("#message")).to_contain_text("Saved ranking #4.")

    # Carol, an admin, sees progress and agreement and exports.
    carol = sign_in(browser, url, watch, "carol", PASSWORDS["carol"])
    expect(carol.locator("#whoami")).to_contain_text("carol (admin)", timeout=TIMEOUT)
    carol.get_by_role("tab", name="Admin").click()
    expect(carol.locator("#admin-summary")).to_contain_text("Prompts with 2+ rankings: 1")
    expect(carol.locator("#admin-progress")).to_contain_text("alice")
    expect(carol.locator("#admin-agreement")).to_contain_text("alice, bob")
    carol.locator("#export").click()
    expect(carol.locator("#export-message")).to_contain_text("Exported 14 pairs rows.")
    download = carol.locator("#export-file a[href$='pairs.jsonl']")
    expect(download).to_have_count(1)
    href = download.get_attribute("href")
    # Waiting in the app's own folder, for its owner only; gone once downloaded.
    [waiting] = (db.parent / "rankings.db-exports").glob("*/pairs.jsonl")
    assert href.endswith(f"/gradio_api/file={waiting}")
    assert stat.S_IMODE(waiting.stat().st_mode) == 0o600
    downloaded = carol.request.get(href).text()
    assert not waiting.exists()
    assert carol.request.get(href).status in (403, 404)

    # The database, row by row.
    store = Store(db)
    rankings = sql(
        store,
        "SELECT r.id, r.prompt_id, a.name, r.supersedes, r.tie FROM rankings r "
        "JOIN annotators a ON a.id = r.annotator_id ORDER BY r.id",
    )
    assert rankings == [
        (1, 1, "alice", None, 1),
        (2, 2, "alice", None, 0),
        (3, 1, "bob", None, 0),
        (4, 1, "bob", 3, 0),
    ]
    items = sql(
        store,
        "SELECT i.ranking_id, c.text, i.rank FROM ranking_items i "
        "JOIN candidates c ON c.id = i.candidate_id ORDER BY i.ranking_id, c.position",
    )
    assert items == [
        (1, "Red.", 1), (1, "Blue.", 2), (1, "Green.", 2), (1, "Purple.", 3),
        (2, XSS, 2), (2, HTML_ANSWERS[1], 1), (2, HTML_ANSWERS[2], 3),
        (3, "Red.", 2), (3, "Blue.", 3), (3, "Green.", 1), (3, "Purple.", 4),
        (4, "Red.", 1), (4, "Blue.", 3), (4, "Green.", 2), (4, "Purple.", 4),
    ]  # fmt: skip
    skips = sql(
        store,
        "SELECT s.id, s.prompt_id, a.name, s.reason FROM skips s "
        "JOIN annotators a ON a.id = s.annotator_id",
    )
    assert skips == [(1, 2, "alice", "The prompt is unclear or broken")]
    retractions = sql(
        store,
        "SELECT x.ranking_id, x.skip_id, a.name FROM retractions x "
        "JOIN annotators a ON a.id = x.annotator_id ORDER BY x.id",
    )
    assert retractions == [(None, 1, "alice"), (3, None, "bob")]
    assert store.integrity_check() == "ok"

    # The exported pairs, exactly.
    out = db.parent / "pairs.jsonl"
    main(["export", "--db", str(db), "--format", "pairs", "--out", str(out)])

    colours, html = "Name a primary colour.", "Show me some HTML."
    assert downloaded == out.read_text(encoding="utf-8")  # the admin's button, the same file
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        pair(colours, "Red.", "Blue.", 1, "alice"),
        pair(colours, "Red.", "Green.", 1, "alice"),
        pair(colours, "Red.", "Purple.", 1, "alice"),
        pair(colours, "Blue.", "Purple.", 1, "alice"),
        pair(colours, "Green.", "Purple.", 1, "alice"),
        pair(html, HTML_ANSWERS[1], XSS, 2, "alice"),
        pair(html, HTML_ANSWERS[1], HTML_ANSWERS[2], 2, "alice"),
        pair(html, XSS, HTML_ANSWERS[2], 2, "alice"),
        pair(colours, "Red.", "Green.", 4, "bob"),
        pair(colours, "Red.", "Blue.", 4, "bob"),
        pair(colours, "Red.", "Purple.", 4, "bob"),
        pair(colours, "Green.", "Blue.", 4, "bob"),
        pair(colours, "Green.", "Purple.", 4, "bob"),
        pair(colours, "Blue.", "Purple.", 4, "bob"),
    ]

    # Nothing ran, and the pages asked nothing of any host but the app's own.
    assert watch.dialogs == []
    assert not [u for u in watch.requests if not u.startswith(url)], "request left 127.0.0.1"
    assert f"{url}x" not in watch.requests and not [u for u in watch.requests if "pixel" in u]


def test_sign_in_refusals_are_explained(app: tuple[str, Path], browser: object) -> None:
    url, _ = app
    watch = Watch()
    page = sign_in(browser, url, watch, "dave", "not-a-password")
    expect(page.get_by_text("Incorrect Credentials")).to_be_visible(timeout=TIMEOUT)
    for _ in range(4):  # five wrong tries for one name in all
        page.get_by_label("username").fill("dave")
        page.get_by_label("password").fill("not-a-password")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_label("username")).to_have_value("", timeout=TIMEOUT)
    page.get_by_label("username").fill("Dave")
    page.get_by_label("password").fill("not-a-password")
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#signin-message")).to_have_text(
        "Too many failed sign-ins for 'Dave'. Wait 15 minutes, then try again, "
        "or ask your admin to reset your password.",
        timeout=TIMEOUT,
    )
    expect(page.get_by_label("username")).to_have_value("Dave")  # the form is kept
    # The next refusal of another kind clears the message.
    page.get_by_label("username").fill("erin")
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#signin-message")).to_have_text("", timeout=TIMEOUT)
    assert not [u for u in watch.requests if not u.startswith(url)], "request left 127.0.0.1"


def slot_of(page: Page, k: int, start: str) -> int:
    return next(i for i, text in enumerate(slot_texts(page, k)) if text.startswith(start))


def test_order_shown_live_and_blank_and_invisible_characters_marked(
    serve: Serve, browser: object
) -> None:
    tricky = "Total: \u202e321 = 1+2\u202c, paid\u200b."
    url, _ = serve([("Pay what?", ["", "   ", tricky, "Nothing."])])
    watch = Watch()
    page = sign_in(browser, url, watch, "alice", PASSWORDS["alice"])
    order = page.locator("#order")
    expect(order).to_have_text("Your order: give each answer a rank (1 = best).", timeout=TIMEOUT)
    # Blank answers say so instead of showing an empty card.
    texts = slot_texts(page, 4)
    assert sorted(texts)[:2] == ["(empty answer)", "(empty answer: 3 blank characters)"]
    empty, blank = texts.index("(empty answer)"), texts.index("(empty answer: 3 blank characters)")
    # The order follows every click, best first, letters in the order shown.
    page.locator(f"#rank-{blank}").get_by_label("2", exact=True).check()
    expect(order).to_have_text(
        f"Your order: {'ABCD'[blank]} · not ranked yet: "
        + ", ".join(letter for i, letter in enumerate("ABCD") if i != blank)
    )
    tricky_at = slot_of(page, 4, "Total")
    nothing_at = slot_of(page, 4, "Nothing")
    page.locator(f"#rank-{tricky_at}").get_by_label("1", exact=True).check()
    page.locator(f"#rank-{nothing_at}").get_by_label("2", exact=True).check()
    page.locator(f"#rank-{empty}").get_by_label("4", exact=True).check()
    tied = " = ".join(sorted("ABCD"[i] for i in (blank, nothing_at)))
    best, worst = "ABCD"[tricky_at], "ABCD"[empty]
    expect(order).to_have_text(
        f"Your order: {best} > {tied} > {worst} · equal ranks need Allow ties"
    )
    page.locator("#tie input").check()
    expect(order).to_have_text(f"Your order: {best} > {tied} > {worst}")

    # Raw view: every invisible character labelled, the text itself exact.
    page.locator("#raw input").check()
    raw = page.locator(f"#answer-{tricky_at} pre.raw-text")
    expect(raw).to_be_visible(timeout=TIMEOUT)
    assert raw.text_content() == tricky
    marks = raw.locator(".invisible-char")
    expect(marks).to_have_count(3)
    assert [marks.nth(i).get_attribute("data-label") for i in range(3)] == ["RLO", "PDF", "ZWSP"]
    assert marks.nth(0).get_attribute("title") == "RIGHT-TO-LEFT OVERRIDE"
    shown = marks.nth(0).evaluate(
        "el => [getComputedStyle(el, '::before').content, getComputedStyle(el).unicodeBidi]"
    )
    assert shown == ['"⟨RLO⟩"', "isolate"]  # the label shows; an override stays inside
    expect(page.locator(f"#answer-{empty}")).to_contain_text("(empty answer)")
    page.locator("#submit").click()
    expect(page.locator("#message")).to_contain_text("Saved ranking #1.")
    assert not [u for u in watch.requests if not u.startswith(url)], "request left 127.0.0.1"


def test_after_a_submit_the_next_prompt_is_scrolled_into_view(
    serve: Serve, browser: object
) -> None:
    long = "A long answer, line after line.\n\n" * 12
    url, _ = serve([(f"Question {n}?", [f"{n}{long}", f"{n}b", f"{n}c"]) for n in (1, 2)])
    page = sign_in(
        browser, url, Watch(), "alice", PASSWORDS["alice"], {"width": 900, "height": 500}
    )
    expect(page.locator("#prompt")).to_contain_text("Question 1?", timeout=TIMEOUT)
    for slot in range(3):
        page.locator(f"#rank-{slot}").get_by_label(str(slot + 1), exact=True).check()
    page.locator("#submit").scroll_into_view_if_needed()
    expect(page.locator("#prompt")).not_to_be_in_viewport()
    page.locator("#submit").click()
    expect(page.locator("#prompt")).to_contain_text("Question 2?", timeout=TIMEOUT)
    expect(page.locator("#prompt")).to_be_in_viewport()
    # A refusal keeps the annotator where they are, by the message.
    page.locator("#submit").scroll_into_view_if_needed()
    page.locator("#submit").click()
    expect(page.locator("#message")).to_contain_text("Not saved. Incomplete")
    expect(page.locator("#prompt")).not_to_be_in_viewport()


def test_a_stale_lease_keeps_the_ranks_and_offers_the_next_prompt(
    serve: Serve, browser: object
) -> None:
    prompts = [(f"Question {n}?", [f"{n}a", f"{n}b", f"{n}c"]) for n in (1, 2, 3)]
    url, service = serve(prompts, per_prompt=1)
    page = sign_in(browser, url, Watch(), "alice", PASSWORDS["alice"])
    expect(page.locator("#prompt")).to_contain_text("Question 1?", timeout=TIMEOUT)
    chosen = {slot: slot + 1 for slot in range(3)}
    for slot, rank in chosen.items():
        page.locator(f"#rank-{slot}").get_by_label(str(rank), exact=True).check()
    # Meanwhile alice signs out in another tab (her lease goes back) and bob takes prompt 1.
    service.sign_out("alice")
    bob = ApiSession(url.rstrip("/"), "bob", PASSWORDS["bob"])
    assert bob.call("next")["prompt_id"] == 1
    bob.close()
    expect(page.locator("#next-prompt")).to_be_hidden()
    page.locator("#submit").click()
    expect(page.locator("#message")).to_contain_text(
        "Not saved. Stale lease: it was released (taken back or replaced by a newer one). "
        "Your ranks are still on screen, but this prompt can no longer take them: press "
        "Go to the next prompt to go on."
    )
    expect_ranks(page, chosen)
    expect(page.locator("#prompt")).to_contain_text("Question 1?")
    page.locator("#next-prompt").click()
    expect(page.locator("#prompt")).to_contain_text("Question 2?", timeout=TIMEOUT)
    expect(page.locator("#next-prompt")).to_be_hidden()
    expect(page.locator("#rank-0 input:checked")).to_have_count(0)


def test_signing_out_gives_the_leased_prompt_back(serve: Serve, browser: object) -> None:
    url, service = serve([(f"Question {n}?", [f"{n}a", f"{n}b"]) for n in (1, 2)], per_prompt=1)
    page = sign_in(browser, url, Watch(), "alice", PASSWORDS["alice"])
    expect(page.locator("#prompt")).to_contain_text("Question 1?", timeout=TIMEOUT)
    assert service.progress("bob") == (0, 1)  # alice holds prompt 1's only slot
    page.locator("#sign-out").click()
    expect(page.get_by_label("username")).to_be_visible(timeout=TIMEOUT)
    assert service.progress("bob") == (0, 2)
    carol = ApiSession(url.rstrip("/"), "carol", PASSWORDS["carol"])
    assert carol.call("next")["prompt_id"] == 1
    carol.close()
    # Signed out for real: the page's session no longer reaches the app.
    assert page.request.get(f"{url}config").status == 401


def test_a_human_evaluation_pair_is_judged_with_verdict_buttons(
    serve: Serve, browser: object, tmp_path: Path
) -> None:
    rows = [
        {
            "messages": [{"role": "user", "content": f"Question {n}?"}],
            "sft_answer": f"SFT answer {n}.",
            "ppo_answer": f"PPO answer {n}.",
        }
        for n in (1, 2)
    ]
    post_pairs(Store(tmp_path / "rankings.db"), rows, "ppo", "tiny", seed=0)
    url, _ = serve([("A question to rank?", ["r1", "r2", "r3"])], per_prompt=1)
    page = sign_in(browser, url, Watch(), "carol", PASSWORDS["carol"])
    expect(page.locator("#prompt")).to_contain_text("Question 1?", timeout=TIMEOUT)
    expect(page.locator("#comparison")).to_be_visible()
    expect(page.locator("#order")).to_contain_text("Which answer is better?")
    for hidden in ("#rank-0", "#rank-1", "#submit", "#tie"):
        expect(page.locator(hidden)).to_be_hidden()
    a_side = page.locator("#answer-0").inner_text()
    page.locator("#verdict-a").click()
    expect(page.locator("#message")).to_contain_text("Saved: A is better")
    expect(page.locator("#prompt")).to_contain_text("Question 2?", timeout=TIMEOUT)
    page.locator("#verdict-both-bad").click()
    # An ordinary prompt next: the ranks come back, the verdicts go.
    expect(page.locator("#prompt")).to_contain_text("A question to rank?", timeout=TIMEOUT)
    expect(page.locator("#comparison")).to_be_hidden()
    for shown in ("#rank-0", "#rank-2", "#submit", "#tie"):
        expect(page.locator(shown)).to_be_visible()

    judged = {v.label for v in verdicts(Store(tmp_path / "rankings.db"))}
    assert judged == {"both bad", "final better" if "PPO" in a_side else "SFT better"}
    page.get_by_role("tab", name="Admin").click()
    expect(page.locator("#admin-summary")).to_contain_text(
        "A/B evaluation (2 pairs)", timeout=TIMEOUT
    )
    expect(page.locator("#admin-summary")).to_contain_text("final policy's win rate over SFT")
