"""The ranking store on real SQLite files: schema, pragmas, leases, submissions, undo."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from alignment.errors import AlignmentError
from alignment.store import (
    LeaseError,
    NewCandidate,
    Store,
    StoreError,
    SubmissionError,
    UnknownAnnotatorError,
    check_ranks,
    connection,
    display_order,
    schema,
)
from tests.ranking_support import Clock, annotated_store, fill_store, user_prompt


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path, clock: Clock) -> Store:
    return annotated_store(tmp_path / "rankings.db", clock)


def assert_store_pragmas(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_new_file_has_schema_wal_and_foreign_keys(db: Store) -> None:
    assert db.schema_version() == len(schema.MIGRATIONS) == schema.SCHEMA_VERSION
    conn = db._conn()
    assert_store_pragmas(conn)
    assert db.integrity_check() == "ok"
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        conn.execute(
            "INSERT INTO skips (prompt_id, annotator_id, reason, created_at) VALUES (99, 1, 'x', 0)"
        )


def test_saved_rows_can_be_neither_updated_nor_deleted(db: Store) -> None:
    lease = db.lease("alice")
    db.submit_ranking("alice", lease.token, [1, 2, 3, 4])
    conn = db._conn()
    for statement in (
        "UPDATE rankings SET tie = 1",
        "DELETE FROM rankings",
        "DELETE FROM ranking_items",
        "UPDATE candidates SET text = 'changed'",
        "DELETE FROM prompts",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    assert db.counts()["rankings"] == 1


def test_migrations_upgrade_an_old_file_in_one_step_and_refuse_newer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    fill_store(path, [("p", ["x", "y"])]).close()
    extra = [
        "ALTER TABLE prompts ADD COLUMN note TEXT",
        "CREATE INDEX prompts_note ON prompts(note)",
    ]
    known = len(schema.MIGRATIONS)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, extra])
    upgraded = Store(path)
    assert upgraded.schema_version() == known + 1
    assert "note" in [r[1] for r in upgraded._conn().execute("PRAGMA table_info(prompts)")]
    assert len(upgraded.candidates(1)) == 2  # data kept
    upgraded.close()
    # A migration that fails leaves the file at its old version, untouched.
    broken = [*schema.MIGRATIONS, extra, ["ALTER TABLE prompts ADD COLUMN x", "NOT SQL"]]
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:known])
    with pytest.raises(StoreError, match=f"schema version {known + 1} is newer"):
        Store(path)


def test_foreign_or_broken_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a ranking store"):
        Store(other)
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite " * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        Store(junk)


def test_candidates_keep_model_adapter_settings_seed_and_any_text(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    weird = (
        "naïve café 日本語 עברית العربية 🙂👩‍👩‍👧 \u0000 nul \r\n crlf \u202e rtl " + "x" * 300_000
    )
    prompt_id = store.add_sampled(
        user_prompt("unicode ✓"),
        [
            NewCandidate(weird, "m", {"temperature": 0.5}, 7, "/adapters/sft", 12, "stop"),
            NewCandidate("", "m", {"temperature": 0.5}, 8, "/adapters/sft", 0, "stop"),
        ],
        "f.jsonl:3",
    )
    rows = store.candidates(prompt_id)
    assert rows[0]["text"] == weird and rows[1]["text"] == ""
    assert (rows[0]["model"], rows[0]["adapter"], rows[0]["seed"]) == ("m", "/adapters/sft", 7)
    assert json.loads(rows[0]["settings"]) == {"temperature": 0.5}
    assert (rows[0]["num_tokens"], rows[0]["finish_reason"]) == (12, "stop")
    # A prompt that already has candidates is not sampled again.
    assert store.add_sampled(user_prompt("unicode ✓"), [NewCandidate("z", "m", {})]) is None
    assert len(store.candidates(prompt_id)) == 2


@pytest.mark.parametrize(
    ("ranks", "tie", "message"),
    [
        ([1, None, 3, 2], False, "Incomplete: give every answer a rank; B has none"),
        ([None, None, 1, 2], True, "A, B have none"),
        ([1, 2, 5, 3], False, "Answer C: rank 5 is out of range 1..4"),
        ([0, 1, 2, 3], False, "Answer A: rank 0 is out of range"),
        ([1, "x", 2, 3], False, "Answer B: rank 'x' is not a number"),
        ([1, 2, 2, 3], False, "Tie not confirmed: B, C share a rank"),
    ],
)
def test_bad_rankings_are_refused_with_a_message(ranks: list, tie: bool, message: str) -> None:
    with pytest.raises(SubmissionError, match=message):
        check_ranks(ranks, tie)


def test_ranks_become_dense_groups() -> None:
    assert check_ranks([2, 1, 3, 4], False) == [2, 1, 3, 4]
    assert check_ranks(["1", "3", "3", "4"], True) == [1, 2, 2, 3]
    assert check_ranks([4, 4, 4, 4], True) == [1, 1, 1, 1]


def test_display_order_is_per_annotator_and_stable() -> None:
    orders = {name: display_order(name, 5, 4) for name in ("alice", "bob", "carol", "dave")}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders.values())
    assert len({tuple(o) for o in orders.values()}) > 1
    assert display_order("alice", 5, 4) == orders["alice"]
    assert (
        display_order("alice", 6, 4) != orders["alice"]
        or display_order("alice", 7, 4) != orders["alice"]
    )


def test_lease_queue_with_n_annotators_per_prompt(db: Store, clock: Clock) -> None:
    a = db.lease("alice", per_prompt=2)
    b = db.lease("bob", per_prompt=2)
    assert (a.prompt_id, b.prompt_id) == (1, 1)
    assert db.lease("alice", per_prompt=2).token == a.token  # open lease handed back, not a new one
    # Two live leases fill prompt 1's two slots: carol gets prompt 2.
    assert db.lease("carol", per_prompt=2).prompt_id == 2
    db.submit_ranking("alice", a.token, [1, 2, 3, 4], per_prompt=2)
    assert db.lease("alice", per_prompt=2).prompt_id == 2  # never the same prompt twice
    assert sorted(a.texts) == ["a0", "a1", "a2", "a3"]
    assert a.texts == [["a0", "a1", "a2", "a3"][i] for i in display_order("alice", 1, 4)]
    with pytest.raises(UnknownAnnotatorError, match="Unknown annotator 'mallory'"):
        db.lease("mallory")


def test_last_slot_goes_to_one_annotator_only(db: Store, clock: Clock) -> None:
    first = db.lease("alice", per_prompt=1)
    assert first.prompt_id == 1
    # Alice holds prompt 1's only slot: bob is sent on to prompt 2 while her lease lives...
    assert db.lease("bob", per_prompt=1).prompt_id == 2
    # ...and once it expires, the slot is free again for carol.
    clock.now += 601
    assert db.lease("carol", per_prompt=1).prompt_id == 1


def test_stale_leases_are_refused(db: Store, clock: Clock) -> None:
    lease = db.lease("alice", per_prompt=1)
    with pytest.raises(LeaseError, match="not assigned to you"):
        db.submit_ranking("bob", lease.token, [1, 2, 3, 4])
    with pytest.raises(LeaseError, match="not assigned to you"):
        db.submit_ranking("alice", "no-such-token", [1, 2, 3, 4])
    db.submit_ranking("alice", lease.token, [1, 2, 3, 4])
    with pytest.raises(LeaseError, match="already submitted"):
        db.submit_ranking("alice", lease.token, [4, 3, 2, 1])
    # Expired and meanwhile taken by someone else: refused, nothing stored.
    late = db.lease("alice", per_prompt=1)
    clock.now += 601
    taken = db.lease("bob", per_prompt=1)
    assert taken.prompt_id == late.prompt_id
    db.submit_ranking("bob", taken.token, [1, 2, 3, 4], per_prompt=1)
    with pytest.raises(LeaseError, match="ran out and other annotators have since filled it"):
        db.submit_ranking("alice", late.token, [1, 2, 3, 4], per_prompt=1)
    assert db.counts()["rankings"] == 2
    # Expired but nobody needed the slot: the slow annotator's work is kept.
    slow = db.lease("alice", per_prompt=1)
    clock.now += 3600
    assert db.submit_ranking("alice", slow.token, [1, 2, 3, 4][: len(slow.texts)], per_prompt=1)


def test_refused_submission_keeps_the_lease(db: Store) -> None:
    lease = db.lease("alice")
    for ranks, tie in (([1, 2, 2, 3], False), ([1, 2, 3], False), ([1, 2, 3, 9], False)):
        with pytest.raises(SubmissionError):
            db.submit_ranking("alice", lease.token, ranks, tie)
    assert db.lease("alice").token == lease.token
    assert db.counts()["rankings"] == 0
    db.submit_ranking("alice", lease.token, [1, 2, 2, 3], tie=True)


def test_skip_needs_a_reason_and_leaves_the_queue(db: Store) -> None:
    lease = db.lease("alice")
    with pytest.raises(SubmissionError, match="Skip needs a reason"):
        db.skip("alice", lease.token, "   ")
    db.skip("alice", lease.token, "prompt is unclear")
    assert db.lease("alice").prompt_id == 2
    assert db.progress("alice") == (1, 2)


def test_undo_retracts_and_resubmission_supersedes(db: Store, clock: Clock) -> None:
    assert db.undo("alice") is None
    lease = db.lease("alice")
    first = db.submit_ranking("alice", lease.token, [1, 2, 2, 3], tie=True)
    clock.now += 1
    skipped_lease = db.lease("alice")
    skip_id = db.skip("alice", skipped_lease.token, "too hard")
    clock.now += 1
    undone = db.undo("alice")  # the skip is the latest
    assert (undone.kind, undone.row_id, undone.prompt_id) == ("skip", skip_id, 2)
    db.release("alice", undone.lease.token)
    clock.now += 1
    undone = db.undo("alice")
    assert (undone.kind, undone.row_id, undone.prompt_id) == ("ranking", first, 1)
    assert undone.lease.previous_ranks == [1, 2, 2, 3]
    second = db.submit_ranking("alice", undone.lease.token, [4, 3, 2, 1])
    rows = db._conn().execute("SELECT id, supersedes FROM rankings ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(first, None), (second, first)]
    retracted = db._conn().execute("SELECT ranking_id, skip_id FROM retractions ORDER BY id")
    assert [tuple(r) for r in retracted] == [(None, skip_id), (first, None)]
    current = list(db.current_rankings())
    assert [r.ranking_id for r in current] == [second]
    assert db.counts()["rankings"] == 2  # the old ranking is still there, only not current


def test_concurrent_annotators_never_double_a_slot(db: Store, tmp_path: Path) -> None:
    names = [f"worker{i}" for i in range(8)]
    db.sync_annotators([(n, "annotator") for n in names])
    for i in range(4, 30):
        db.add_sampled(user_prompt(f"extra {i}"), [NewCandidate(t, "m", {}) for t in "xyz"])
    # Each thread opens its own Store on the same file, as separate app workers would.
    acknowledged: list[tuple[str, int, int]] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            own = Store(db.path)
            for _ in range(5):
                lease = own.lease(name, per_prompt=2)
                ranks = list(range(1, len(lease.texts) + 1))
                ranking = own.submit_ranking(name, lease.token, ranks, per_prompt=2)
                acknowledged.append((name, lease.prompt_id, ranking))
            own.close()
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(acknowledged) == 40
    per_prompt = db._conn().execute(
        "SELECT prompt_id, count(*), count(DISTINCT annotator_id) FROM rankings GROUP BY prompt_id"
    )
    assert all(count <= 2 and count == distinct for _, count, distinct in per_prompt)
    stored = {row[0] for row in db._conn().execute("SELECT id FROM rankings")}
    assert stored == {r for _, _, r in acknowledged}


def test_current_rankings_read_through_a_connection_with_the_pragmas(
    db: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = db.lease("alice")
    db.submit_ranking("alice", lease.token, [1, 2, 3, 4])
    opened: list[sqlite3.Connection] = []
    connect = connection.connect

    def recording_connect(path: Path) -> sqlite3.Connection:
        opened.append(connect(path))
        return opened[-1]

    monkeypatch.setattr(connection, "connect", recording_connect)
    rankings = db.current_rankings()
    assert next(rankings).ranking_id == 1
    [snapshot] = opened  # a connection of its own, opened by the one function that sets pragmas
    assert_store_pragmas(snapshot)
    rankings.close()


def test_errors_are_user_errors() -> None:
    assert issubclass(SubmissionError, AlignmentError) and issubclass(StoreError, AlignmentError)
