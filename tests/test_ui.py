"""The ranking app's logic through gradio_client against the app really served on 127.0.0.1, plus
the annotators file and `align annotators`/`align ui` bad-input handling."""

from __future__ import annotations

import html
import io
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio")
from alignment.ui.annotators import (
    AnnotatorRegistry,
    add_annotator,
    load_annotators,
    remove_annotator,
    verify_password,
)
from alignment.ui.render import EMPTY, render_text
from gradio_client import Client
from gradio_client.exceptions import AppError

from alignment.cli import main
from alignment.errors import DataError
from alignment.store import Store, display_order
from tests.ranking_support import (
    PASSWORDS,
    ROLES,
    ApiSession,
    Serve,
    served_apps,
    sql,
    write_annotators,
)

# Every code point class that tends to break things, and big: the app must carry it intact.
UNICODE = (
    "naïve café · 日本語のテキスト · עברית · العربية · हिन्दी · 🙂👩‍👩‍👧‍👦🏳️‍🌈 · e\u0301 · "
    "\u200b\u200d\u2028\u2029 · 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 · <b>not bold</b> & &amp; ${x} {{y}}\n\ttabs\r\n"
)
BIG = UNICODE * 5000  # about 500 KB of UTF-8


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    with served_apps(tmp_path) as start:
        yield start


def client(url: str, name: str) -> Client:
    return Client(url, auth=(name, PASSWORDS[name]), verbose=False)


def test_sign_in_refuses_wrong_password_and_unknown_annotator(serve: Callable[..., str]) -> None:
    url, _ = serve()
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("alice", "wrong-password"), verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=("mallory", PASSWORDS["alice"]), verbose=False)
    assert (
        httpx.post(f"{url}login", data={"username": "alice", "password": "nope"}).status_code == 400
    )
    # Without signing in, neither the page's data nor the API answers.
    assert httpx.post(f"{url}gradio_api/call/next", json={"data": []}).status_code == 401
    assert client(url, "alice").predict(api_name="/progress") == {
        "annotator": "alice",
        "done_today": 0,
        "left": 6,
    }


def test_queue_orders_per_annotator_and_n_per_prompt(serve: Callable[..., str]) -> None:
    url, _ = serve(per_prompt=2)
    alice, bob, carol = client(url, "alice"), client(url, "bob"), client(url, "carol")
    a, b = alice.predict(api_name="/next"), bob.predict(api_name="/next")
    assert a["prompt_id"] == b["prompt_id"] == 1
    texts = [f"p1-a{j}" for j in range(4)]
    assert a["answers"] == [texts[i] for i in display_order("alice", 1, 4)]
    assert b["answers"] == [texts[i] for i in display_order("bob", 1, 4)]
    assert a["answers"] != b["answers"]  # shuffled per annotator (fixed seeds: known to differ)
    assert set(a) == {
        "token",
        "prompt_id",
        "prompt",
        "answers",
        "k",
        "expires_at",
        "previous_ranks",
    }
    # Reloading hands back the same lease; a third annotator cannot take prompt 1's last slot.
    assert alice.predict(api_name="/next")["token"] == a["token"]
    assert carol.predict(api_name="/next")["prompt_id"] == 2


def test_bad_submissions_are_refused_and_nothing_changes(
    serve: Callable[..., str], tmp_path: Path
) -> None:
    url, _ = serve()
    alice = client(url, "alice")
    lease = alice.predict(api_name="/next")
    token = lease["token"]
    refusals = [
        (([1, None, 2, 3], False), "Incomplete: give every answer a rank; B has none"),
        (([1, 2, 3], False), "this prompt has 4 answers and 3 ranks were given"),
        (([1, 2, 3, 7], False), "Answer D: rank 7 is out of range 1..4"),
        (([1, 2, 2, 3], False), "Tie not confirmed: B, C share a rank"),
    ]
    for (ranks, tie), message in refusals:
        with pytest.raises(AppError, match=message):
            alice.predict(token, ranks, tie, api_name="/submit")
    with pytest.raises(AppError, match="Skip needs a reason"):
        alice.predict(token, "  ", api_name="/skip")
    store = Store(tmp_path / "rankings.db")
    assert store.counts()["rankings"] == 0 and store.counts()["skips"] == 0
    assert alice.predict(api_name="/next")["token"] == token  # still holding the same prompt
    saved = alice.predict(token, [1, 2, 2, 3], True, api_name="/submit")
    assert saved["ranking_id"] == 1 and saved["next"]["prompt_id"] == 2
    [ranking] = list(store.current_rankings())
    by_position = {item.position: item.rank for item in ranking.items}
    order = display_order("alice", 1, 4)
    assert [by_position[p] for p in order] == [1, 2, 2, 3]
    assert ranking.tie is True and ranking.annotator == "alice"


def test_stale_leases_are_refused(serve: Callable[..., str]) -> None:
    url, _ = serve()
    alice, bob = client(url, "alice"), client(url, "bob")
    lease = alice.predict(api_name="/next")
    with pytest.raises(AppError, match="Stale lease: this prompt is not assigned to you"):
        bob.predict(lease["token"], [1, 2, 3, 4], False, api_name="/submit")
    alice.predict(lease["token"], [1, 2, 3, 4], False, api_name="/submit")
    with pytest.raises(AppError, match="Stale lease: you already submitted a ranking for it"):
        alice.predict(lease["token"], [4, 3, 2, 1], False, api_name="/submit")
    with pytest.raises(AppError, match="Stale lease"):
        alice.predict("made-up-token", [1, 2, 3, 4], False, api_name="/submit")


def test_skip_undo_and_progress(serve: Callable[..., str], tmp_path: Path) -> None:
    url, _ = serve()
    bob = client(url, "bob")
    first = bob.predict(api_name="/next")
    ranked = bob.predict(first["token"], [2, 1, 4, 3], False, api_name="/submit")
    skipped = bob.predict(ranked["next"]["token"], "needs expertise", api_name="/skip")
    assert skipped["next"]["prompt_id"] == 3
    assert bob.predict(api_name="/progress") == {"annotator": "bob", "done_today": 2, "left": 4}
    undo = bob.predict(api_name="/undo")
    assert (undo["undone"], undo["id"], undo["next"]["prompt_id"]) == ("skip", 1, 2)
    undo = bob.predict(api_name="/undo")
    assert (undo["undone"], undo["id"]) == ("ranking", ranked["ranking_id"])
    assert undo["next"]["prompt_id"] == 1 and undo["next"]["previous_ranks"] == [2, 1, 4, 3]
    again = bob.predict(undo["next"]["token"], [1, 2, 3, 4], False, api_name="/submit")
    assert bob.predict(api_name="/undo")["id"] == again["ranking_id"]
    assert bob.predict(api_name="/progress")["done_today"] == 0
    store = Store(tmp_path / "rankings.db")
    assert sql(store, "SELECT id, supersedes FROM rankings ORDER BY id") == [(1, None), (2, 1)]
    assert store.counts()["retractions"] == 3 and store.counts()["current_rankings"] == 0


def test_admin_stats_are_for_admins_only(serve: Callable[..., str]) -> None:
    url, _ = serve()
    alice, bob, carol = client(url, "alice"), client(url, "bob"), client(url, "carol")
    for person in (alice, bob):
        lease = person.predict(api_name="/next")
        person.predict(lease["token"], [1, 2, 3, 4], False, api_name="/submit")
    with pytest.raises(AppError, match="Admins only"):
        alice.predict(api_name="/admin_stats")
    stats = carol.predict(api_name="/admin_stats")
    assert [(a["name"], a["rankings"]) for a in stats["annotators"]] == [
        ("alice", 1),
        ("bob", 1),
        ("carol", 0),
    ]
    assert stats["agreement"]["prompts_compared"] == 1
    assert stats["agreement"]["per_prompt"][0]["annotators"] == ["alice", "bob"]


def test_any_unicode_of_any_size_round_trips(serve: Callable[..., str], tmp_path: Path) -> None:
    url, _ = serve([("Ünïcödé prompt 🙂 " + UNICODE, [BIG, "", " ", UNICODE])])
    alice = client(url, "alice")
    lease = alice.predict(api_name="/next")
    assert sorted(lease["answers"]) == sorted([BIG, "", " ", UNICODE])
    assert lease["prompt"] == [{"role": "user", "content": "Ünïcödé prompt 🙂 " + UNICODE}]
    big_at = lease["answers"].index(BIG)
    ranks = [2, 2, 2, 2]
    ranks[big_at] = 1
    alice.predict(lease["token"], ranks, True, api_name="/submit")
    [row] = sql(Store(tmp_path / "rankings.db"), "SELECT text FROM candidates WHERE position = 0")
    assert row[0] == BIG
    out = tmp_path / "rankings.jsonl"
    main(
        ["export", "--db", str(tmp_path / "rankings.db"), "--format", "rankings", "--out", str(out)]
    )
    import json

    exported = json.loads(out.read_text(encoding="utf-8"))
    assert exported["completions"][0] == BIG and exported["ranks"] == [1, 2, 2, 2]


def test_sessions_survive_a_restart_and_sign_out_ends_them(tmp_path: Path) -> None:
    with served_apps(tmp_path) as start:
        url, service = start()
        session = ApiSession(url, "alice", PASSWORDS["alice"])
        assert session.call("progress")["annotator"] == "alice"
        cookies = dict(session.http.cookies)
        # The database keeps a keyed hash of the session's token, never the token itself.
        stored = {h for (h,) in sql(service.store, "SELECT token_hash FROM sessions")}
        assert stored and not stored & set(cookies.values())
    with served_apps(tmp_path) as start:  # a new app process would see the same
        url, _ = start()
        session.http.base_url = url
        assert session.call("progress")["annotator"] == "alice"  # no new sign-in
        session.http.get("/logout")
        signed_out = httpx.Client(base_url=url, cookies=cookies)
        assert signed_out.post("/gradio_api/call/progress", json={"data": []}).status_code == 401
        signed_out.close()
    session.close()


def test_annotators_added_while_running_can_sign_in_and_removed_ones_cannot(
    serve: Callable[..., str], tmp_path: Path
) -> None:
    url, _ = serve()
    file = tmp_path / "annotators.yaml"
    add_annotator(file, "dave", "dave-password", "annotator")
    dave = Client(url, auth=("dave", "dave-password"), verbose=False)
    assert dave.predict(api_name="/next")["prompt_id"] == 1
    entries = load_annotators(file)
    del entries["dave"]
    from alignment.ui.annotators import save_annotators

    save_annotators(file, entries)
    with pytest.raises(AppError, match="Unknown annotator 'dave'"):
        dave.predict(api_name="/next")


# -- the annotators file and CLI -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("annotators:\n  alice: [oops\n", r"bad\.yaml:\d+: not valid YAML"),
        ("people:\n  alice: {}\n", r"bad\.yaml:1: unknown key 'people'"),
        (
            "annotators:\n  alice:\n    role: boss\n    password: x\n",
            r"bad\.yaml:2: annotator 'alice': role 'boss'",
        ),
        (
            "annotators:\n  alice:\n    role: admin\n",
            r"bad\.yaml:2: annotator 'alice': missing `password`",
        ),
        ("annotators:\n  alice:\n    password: hunter22\n", r"bad\.yaml:2: .*not a scrypt hash"),
        (
            "annotators:\n  bob:\n    pasword: x\n",
            r"bad\.yaml:3: annotator 'bob': unknown key 'pasword'",
        ),
        ("annotators:\n  a b:\n    password: x\n", r"bad\.yaml:2: annotator 'a b': names use"),
        ("annotators:\n  - alice\n", r"bad\.yaml:2: `annotators` must map names"),
        ("- just a list\n", r"bad\.yaml:1: expected a mapping"),
    ],
)
def test_malformed_annotators_file_names_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(DataError, match=message):
        load_annotators(bad)


def test_duplicate_annotator_names_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "a.yaml"
    add_annotator(file, "alice", "password-1")
    text = file.read_text()
    entry = text[text.index("  alice:") :]
    file.write_text(text + entry)
    with pytest.raises(DataError, match=r"a\.yaml:\d+: annotator 'alice': listed twice"):
        load_annotators(file)


def test_annotators_add_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    file = tmp_path / "people.yaml"

    def run(*args: str, stdin: str) -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main(["annotators", *args, "--file", str(file)])
        except SystemExit as err:
            return int(err.code)
        return 0

    assert run("add", "erin", "--role", "admin", stdin="erin-password\n") == 0
    assert "erin (admin) saved" in capsys.readouterr().out
    assert run("add", "erin", stdin="other-password\n") == 2
    assert "annotator 'erin' already exists; pass --replace" in capsys.readouterr().err
    assert run("add", "frank", stdin="short\n") == 2
    assert "password too short" in capsys.readouterr().err
    assert run("add", "erin", "--replace", stdin="new-password\n") == 0
    entries = load_annotators(file)
    assert entries["erin"].role == "admin"  # a new password keeps the role
    assert verify_password("new-password", entries["erin"].password_hash)
    assert not verify_password("erin-password", entries["erin"].password_hash)
    assert "new-password" not in file.read_text()
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    registry = AnnotatorRegistry(file)
    assert registry.authenticate("erin", "new-password")
    assert not registry.authenticate("erin", "wrong")
    assert not registry.authenticate("nobody", "new-password")
    assert run("add", "erin", "--replace", "--role", "annotator", stdin="new-password\n") == 0
    capsys.readouterr()
    assert run("list", stdin="") == 0
    assert capsys.readouterr().out.split() == ["erin", "annotator"]


def test_annotators_remove_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = write_annotators(tmp_path / "a.yaml", PASSWORDS, ROLES)
    main(["annotators", "remove", " BOB", "--file", str(file)])
    assert "removed bob" in capsys.readouterr().out
    assert sorted(load_annotators(file)) == ["alice", "carol"]
    with pytest.raises(SystemExit) as exit_info:
        main(["annotators", "remove", "bob", "--file", str(file)])
    assert exit_info.value.code == 2
    assert "no annotator 'bob' (listed: alice, carol)" in capsys.readouterr().err
    with pytest.raises(DataError, match="no annotator"):
        remove_annotator(file, "mallory")


def test_ui_command_reports_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "annotators.yaml"
    bad.write_text("annotators:\n  alice:\n    role: annotator\n    password: plain-text\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--db", str(tmp_path / "r.db"), "--annotators", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: annotator 'alice'" in err and "not a scrypt hash" in err
    with pytest.raises(SystemExit):
        main(["ui", "--db", str(tmp_path / "r.db"), "--annotators", str(tmp_path / "none.yaml")])
    assert "none.yaml: annotators file not found" in capsys.readouterr().err


def test_blank_answers_and_invisible_characters_are_shown() -> None:
    assert render_text("") == render_text("", raw=False) == EMPTY
    assert "(empty answer: 2 blank characters)" in render_text("\u200b ")
    raw = render_text("a\r\n\u2066b\u2069\U000e0041\ufe0f\tc", raw=True)
    labels = re.findall(r'data-label="([^"]+)"', raw)
    assert labels == ["CR", "LRI", "PDI", "U+E0041", "U+FE0F"]  # tab and newline are plain
    assert html.unescape(re.sub(r"<[^>]+>", "", raw)) == "a\r\n\u2066b\u2069\U000e0041\ufe0f\tc"
    assert "<script>" not in render_text("<script>x</script>\u200b", raw=True)
