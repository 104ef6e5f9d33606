"""The ranking store on real databases, SQLite files and a PostgreSQL server (the `database`
fixture runs each test on both): schema, pragmas, leases, submissions, undo."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import inspect, text

from alignment.errors import AlignmentError, describe_file_system_failure
from alignment.store import (
    LeaseError,
    NewCandidate,
    Store,
    StoreError,
    SubmissionError,
    UnknownAnnotatorError,
    check_ranks,
    display_order,
    schema,
    schema_history,
)
from tests import test_cli_errors
from tests.ranking_support import Clock, annotated_store, fill_store, sql, user_prompt

small_file_system = test_cli_errors.small_file_system  # the tmpfs fixture, shared


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(database: str, clock: Clock) -> Iterator[Store]:
    store = annotated_store(database, clock)
    yield store
    store.close()


def refused_write(store: Store, statement: str, params: dict | None = None) -> str:
    """The database's refusal of `statement` (its own transaction, rolled back), as text."""
    with pytest.raises(sqlalchemy.exc.IntegrityError) as refused, store.database.write() as conn:
        conn.execute(text(statement), params or {})
    return str(refused.value.orig)


def assert_store_pragmas(conn: sqlalchemy.Connection) -> None:
    def pragma(name: str) -> object:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()

    assert pragma("journal_mode") == "wal"
    assert pragma("foreign_keys") == 1
    assert pragma("synchronous") == 2  # FULL
    assert pragma("busy_timeout") == 30_000


def test_new_database_has_schema_and_foreign_keys(db: Store) -> None:
    assert db.schema_version() == schema.CREATED_VERSION == schema.SCHEMA_VERSION
    if db.database.dialect == "sqlite":
        with db.database.read() as conn:
            assert_store_pragmas(conn)
        assert db.integrity_check() == "ok"
    refusal = refused_write(
        db,
        "INSERT INTO skips (prompt_id, annotator_id, reason, created_at) VALUES (99, 1, 'x', 0)",
    )
    assert "foreign key" in refusal.lower()


def test_every_connection_has_the_pragmas(tmp_path: Path) -> None:
    """Each thread's pooled connection, not just the first, has WAL, foreign keys, FULL sync."""
    store = Store(tmp_path / "r.db")
    barrier = threading.Barrier(4)
    seen: list[bool] = []

    def check() -> None:
        with store.database.read() as conn:
            barrier.wait(timeout=30)  # four connections open at once
            assert_store_pragmas(conn)
            seen.append(True)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert seen == [True] * 4


def test_saved_rows_can_be_neither_updated_nor_deleted(db: Store) -> None:
    lease = db.lease("alice")
    db.submit_ranking("alice", lease.token, [1, 2, 3, 4])
    for statement in (
        "UPDATE rankings SET tie = 1",
        "DELETE FROM rankings",
        "DELETE FROM ranking_items",
        "UPDATE candidates SET text = 'changed'",
        "DELETE FROM prompts",
    ):
        assert "append-only" in refused_write(db, statement)
    if db.database.dialect == "postgresql":
        assert "append-only" in refused_write(db, "TRUNCATE rankings CASCADE")
    assert db.counts()["rankings"] == 1


def test_migrations_upgrade_in_one_step_and_refuse_newer(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill_store(database, [("p", ["x", "y"])]).close()
    extra = [
        "ALTER TABLE prompts ADD COLUMN note TEXT",
        "CREATE INDEX prompts_note ON prompts(note)",
    ]
    known = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, extra])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", known + 1)
    upgraded = Store(database)
    assert upgraded.schema_version() == known + 1
    with upgraded.database.read() as conn:
        assert "note" in [c["name"] for c in inspect(conn).get_columns("prompts")]
    assert len(upgraded.candidates(1)) == 2  # data kept
    upgraded.close()
    # A migration that fails leaves the database at its old version, untouched.
    broken = [*schema.MIGRATIONS, ["ALTER TABLE prompts ADD COLUMN x TEXT", "NOT SQL"]]
    monkeypatch.setattr(schema, "MIGRATIONS", broken)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", known + 2)
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        Store(database)
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:-2])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", known)
    with pytest.raises(StoreError, match=f"schema version {known + 1} is newer"):
        Store(database)


def schema_names(store: Store) -> dict[str, object]:
    """Tables with their columns, indexes, views and triggers: what makes up a schema."""
    with store.database.read() as conn:
        found = inspect(conn)
        tables = {
            table: (
                sorted(c["name"] for c in found.get_columns(table)),
                sorted(str(i["name"]) for i in found.get_indexes(table)),
            )
            for table in found.get_table_names()
        }
        triggers = sorted(
            conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars()
        )
        return {"tables": tables, "views": sorted(found.get_view_names()), "triggers": triggers}


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_sqlite_file_upgrades_to_the_schema_of_a_new_one(
    tmp_path: Path, version: int
) -> None:
    old = tmp_path / f"v{version}.db"
    conn = sqlite3.connect(old)
    for statements in schema_history.SQLITE_HISTORY[:version]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    upgraded = Store(old)
    assert upgraded.schema_version() == schema.SCHEMA_VERSION
    assert schema_names(upgraded) == schema_names(Store(tmp_path / "new.db"))


def test_foreign_or_broken_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a ranking store"):
        Store(other)
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite " * 100)
    with pytest.raises(StoreError, match=r"junk\.db: not a usable SQLite database"):
        Store(junk)
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)


def test_a_foreign_postgres_database_is_refused(postgres_cluster) -> None:
    url = postgres_cluster.new_database()
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x int)"))
    engine.dispose()
    with pytest.raises(StoreError, match="not a ranking store"):
        Store(url)


def align(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignment.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_unreachable_postgres_is_one_line_naming_the_host(postgres_cluster) -> None:
    # Port 9 on the loopback: nothing listens there; the password is never shown.
    done = align("agreement", "--db", "postgresql://bob:hunter2@127.0.0.1:9/rankings")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: postgresql://bob:***@127.0.0.1:9/rankings: cannot connect to ")
    assert "PostgreSQL at 127.0.0.1 (" in line and "hunter2" not in line


def test_postgres_without_psycopg_names_the_extra(tmp_path: Path) -> None:
    # A Python where psycopg cannot be imported (a None entry in sys.modules refuses it).
    script = (
        "import sys; sys.modules['psycopg'] = None; from alignment.cli import main; "
        "main(['agreement', '--db', 'postgresql://u@db.example/rankings'])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: postgresql://u@db.example/rankings: PostgreSQL needs the psycopg driver; "
        "install it with: pip install 'alignment[postgres]'"
    )


def test_a_full_disk_is_one_line_naming_the_file(small_file_system) -> None:
    path = small_file_system("200k") / "rankings.db"
    store = Store(path)
    with pytest.raises(sqlalchemy.exc.OperationalError) as failed:
        for i in range(1000):
            store.add_sampled(user_prompt(f"q{i}"), [NewCandidate("x" * 2000, "m", {})])
    assert describe_file_system_failure(failed.value) == (
        f"cannot write {path}: disk full (No space left on device)",
        28,
    )
    store.close()


def test_other_database_urls_are_refused() -> None:
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        Store("mysql://u@host/db")


def test_candidates_keep_model_adapter_settings_seed_and_any_text(database: str) -> None:
    store = Store(database)
    # PostgreSQL text cannot hold NUL; that refusal is tested below.
    nul = " \u0000 nul" if store.database.dialect == "sqlite" else ""
    weird = f"naïve café 日本語 עברית العربية 🙂👩‍👩‍👧{nul} \r\n crlf \u202e rtl " + "x" * 300_000
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
    store.close()


def test_postgres_refuses_nul_in_text_with_a_clear_error(postgres_cluster) -> None:
    store = Store(postgres_cluster.new_database())
    with pytest.raises(StoreError, match=r"PostgreSQL cannot store the NUL character"):
        store.add_sampled(user_prompt("p"), [NewCandidate("a\u0000b", "m", {})])
    assert store.counts()["prompts"] == 0  # nothing half-stored
    store.close()


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
    rows = sql(db, "SELECT id, supersedes FROM rankings ORDER BY id")
    assert rows == [(first, None), (second, first)]
    retracted = sql(db, "SELECT ranking_id, skip_id FROM retractions ORDER BY id")
    assert retracted == [(None, skip_id), (first, None)]
    current = list(db.current_rankings())
    assert [r.ranking_id for r in current] == [second]
    assert db.counts()["rankings"] == 2  # the old ranking is still there, only not current


def test_concurrent_annotators_never_double_a_slot(db: Store, database: str) -> None:
    names = [f"worker{i}" for i in range(8)]
    db.sync_annotators([(n, "annotator") for n in names])
    for i in range(4, 30):
        db.add_sampled(user_prompt(f"extra {i}"), [NewCandidate(t, "m", {}) for t in "xyz"])
    # Each thread opens its own Store on the same file, as separate app workers would.
    acknowledged: list[tuple[str, int, int]] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            own = Store(database)
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
    per_prompt = sql(
        db,
        "SELECT prompt_id, count(*), count(DISTINCT annotator_id) FROM rankings GROUP BY prompt_id",
    )
    assert all(count <= 2 and count == distinct for _, count, distinct in per_prompt)
    stored = {row[0] for row in sql(db, "SELECT id FROM rankings")}
    assert stored == {r for _, _, r in acknowledged}


def test_current_rankings_read_one_snapshot_while_the_caller_writes(db: Store) -> None:
    for name in ("alice", "bob"):
        lease = db.lease(name, per_prompt=2)
        db.submit_ranking(name, lease.token, [1, 2, 3, 4], per_prompt=2)
    rankings = db.current_rankings()
    first = next(rankings)
    # Writes meanwhile (on this thread) neither block nor show up in the iteration.
    lease = db.lease("carol", per_prompt=2)
    db.submit_ranking("carol", lease.token, [4, 3, 2, 1], per_prompt=2)
    assert [first.ranking_id, *(r.ranking_id for r in rankings)] == [1, 2]
    assert [r.ranking_id for r in db.current_rankings()] == [1, 2, 3]


def test_errors_are_user_errors() -> None:
    assert issubclass(SubmissionError, AlignmentError) and issubclass(StoreError, AlignmentError)
