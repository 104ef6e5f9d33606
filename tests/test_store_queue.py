"""The queue on real databases (SQLite and PostgreSQL): the tables `queueing` keeps always agree
with the rankings, skips and leases they summarise; a lease picks the prompt the plain definition
picks; and lease, submit, undo and progress do the same work at 20,000 prompts as at 1,000
(counted in SQLite virtual-machine steps, never in time)."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import event, text

from alignment.store import NewCandidate, Store, SubmissionError, schema, schema_history
from alignment.store.annotators import annotator_id
from tests.ranking_support import Clock, bulk_store, fill_store, sql, user_prompt

NAMES = ["alice", "bob", "carol", "dave"]

# What "available" means, written plainly (the slow scan the queue replaced): a prompt with
# candidates, not ranked or skipped by the annotator, whose current rankings plus the other
# annotators' live leases are below N.
PLAIN_AVAILABLE = """
    SELECT p.id FROM prompts p
    WHERE EXISTS (SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)
      AND NOT EXISTS (SELECT 1 FROM current_rankings r
                      WHERE r.prompt_id = p.id AND r.annotator_id = :a)
      AND NOT EXISTS (SELECT 1 FROM current_skips s
                      WHERE s.prompt_id = p.id AND s.annotator_id = :a)
      AND (SELECT count(*) FROM current_rankings r WHERE r.prompt_id = p.id)
        + (SELECT count(*) FROM assignments s
           WHERE s.prompt_id = p.id AND s.closed_at IS NULL AND s.expires_at > :now
             AND s.annotator_id <> :a) < :n
    ORDER BY p.id
"""


def plainly_available(store: Store, name: str, n: int) -> list[int]:
    with store.database.read() as conn:
        params = {"a": annotator_id(conn, name), "now": store.clock(), "n": n}
        return list(conn.execute(text(PLAIN_AVAILABLE), params).scalars())


# What each queue table should hold, recomputed from the tables it summarises.
RANKED = (
    "SELECT p.id, (SELECT count(*) FROM current_rankings r WHERE r.prompt_id = p.id) "
    "FROM prompts p WHERE EXISTS (SELECT 1 FROM candidates c WHERE c.prompt_id = p.id)"
)
DONE = (
    "SELECT annotator_id, prompt_id FROM current_rankings "
    "UNION SELECT annotator_id, prompt_id FROM current_skips"
)


def assert_queue_agrees(store: Store) -> None:
    """Every queue table equals what it summarises, recomputed from scratch."""
    ranked, done = dict(sql(store, RANKED)), set(sql(store, DONE))
    assert dict(sql(store, "SELECT prompt_id, ranked FROM queue")) == ranked
    sizes = sql(store, "SELECT ranked, prompts FROM queue_sizes WHERE prompts > 0")
    assert dict(sizes) == Counter(ranked.values())
    assert set(sql(store, "SELECT annotator_id, prompt_id FROM queue_done")) == done
    done_sizes = sql(
        store, "SELECT annotator_id, ranked, prompts FROM done_sizes WHERE prompts > 0"
    )
    assert {(a, r): n for a, r, n in done_sizes} == Counter((a, ranked[p]) for a, p in done)
    # Below each cursor: done, full for that N, or listed as possibly free again.
    reopened = set(sql(store, "SELECT annotator_id, per_prompt, prompt_id FROM queue_reopened"))
    cursors = sql(store, "SELECT annotator_id, per_prompt, next_prompt FROM queue_cursors")
    for a, n, cursor in cursors:
        for prompt, count in ranked.items():
            if prompt < cursor:
                assert (a, prompt) in done or count >= n or (a, n, prompt) in reopened


def test_a_lease_picks_what_the_plain_definition_picks_whatever_happens(database: str) -> None:
    """Random leases (N = 1, 2 or 3), submissions, skips, releases, undos, expiries and new
    prompts; after each step the queue agrees with the tables and every annotator's next prompt
    and count left are the plain definition's."""
    rng = random.Random(16)
    clock = Clock()
    store = fill_store(
        database, [(f"p{i}", [f"p{i}-{j}" for j in range(2 + i % 3)]) for i in range(12)]
    )
    store.clock = clock
    store.sync_annotators([(name, "annotator") for name in NAMES])
    leases: dict[str, tuple[str, int, int]] = {}  # name -> (token, N, answers)
    added = 12
    # Fewer steps on PostgreSQL, where each of the checks' many reads is a round trip.
    for _ in range(500 if store.database.dialect == "sqlite" else 200):
        name, n = rng.choice(NAMES), rng.choice((1, 2, 3))
        action = rng.choices(
            ["lease", "submit", "skip", "release", "undo", "wait", "add"],
            [6, 6, 1, 1, 2, 1, 1],
        )[0]
        try:
            if action == "lease":
                holds = name in leases and store.lease(name, n).token == leases[name][0]
                if not holds:
                    expected = plainly_available(store, name, n)
                    got = store.lease(name, n)
                    assert (got.prompt_id if got else None) == (expected[0] if expected else None)
                    if got is not None:
                        leases[name] = (got.token, n, len(got.texts))
            elif action in ("submit", "skip", "release") and name in leases:
                token, n, k = leases.pop(name)
                if action == "submit":
                    store.submit_ranking(name, token, rng.sample(range(1, k + 1), k), False, n)
                elif action == "skip":
                    store.skip(name, token, "unclear", n)
                else:
                    store.release(name, token)
            elif action == "undo":
                undone = store.undo(name)
                if undone is not None:
                    leases[name] = (undone.lease.token, n, len(undone.lease.texts))
            elif action == "wait":
                clock.now += rng.choice((30, 700))  # leases last 600 s
            elif action == "add":
                added += 1
                store.add_sampled(
                    user_prompt(f"p{added}"), [NewCandidate(t, "m", {}) for t in "xy"]
                )
        except SubmissionError:
            leases.pop(name, None)  # a stale lease (ran out, taken): the annotator reloads
        assert_queue_agrees(store)
        for other in NAMES:
            for size in (1, 2, 3):
                left = store.progress(other, size)[1]
                assert left == len(plainly_available(store, other, size)), (other, size)
    store.close()


def test_an_older_file_gets_its_queue_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)  # a file as version 1 made and filled it
    for statement in schema_history.SQLITE_HISTORY[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    for prompt in range(1, 5):
        conn.execute(
            "INSERT INTO prompts (id, key, messages, created_at) VALUES (?, ?, '[]', 0)",
            (prompt, f"k{prompt}"),
        )
        conn.executemany(
            "INSERT INTO candidates (prompt_id, position, text, model, settings, created_at) "
            "VALUES (?, ?, 'x', 'm', '{}', 0)",
            [(prompt, position) for position in range(3)],
        )
    conn.executemany(
        "INSERT INTO annotators (id, name, role, created_at) VALUES (?, ?, 'annotator', 0)",
        [(1, "alice"), (2, "bob")],
    )
    for ranking, (prompt, who) in enumerate([(1, 1), (1, 2), (2, 1), (3, 2)], start=1):
        conn.execute(
            "INSERT INTO rankings (id, prompt_id, annotator_id, tie, created_at) "
            "VALUES (?, ?, ?, 0, 0)",
            (ranking, prompt, who),
        )
    conn.execute(
        "INSERT INTO skips (prompt_id, annotator_id, reason, created_at) VALUES (4, 1, 'x', 0)"
    )
    conn.execute("INSERT INTO retractions (ranking_id, annotator_id, created_at) VALUES (4, 2, 0)")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.schema_version() == schema.SCHEMA_VERSION == 3
    assert_queue_agrees(store)
    assert dict(sql(store, "SELECT prompt_id, ranked FROM queue")) == {
        1: 2, 2: 1, 3: 0, 4: 0,
    }  # fmt: skip
    assert plainly_available(store, "alice", 2) == [3] and store.progress("alice", 2)[1] == 1
    assert store.lease("alice", 2).prompt_id == 3
    assert store.lease("bob", 2).prompt_id == 2
    store.close()


def test_the_database_refuses_what_would_break_the_counts(database: str) -> None:
    store = fill_store(database, [("p1", ["a", "b"])])
    store.sync_annotators([("alice", "annotator")])
    lease = store.lease("alice")
    first = store.submit_ranking("alice", lease.token, [1, 2])

    def refused(statement: str, **params: object) -> str:
        with pytest.raises(sqlalchemy.exc.IntegrityError) as err, store.database.write() as conn:
            conn.execute(text(statement), params)
        return str(err.value.orig)

    insert = (
        "INSERT INTO rankings (prompt_id, annotator_id, supersedes, tie, created_at) "
        "VALUES (1, 1, :s, 0, 0)"
    )
    assert "already has a current ranking or skip" in refused(insert, s=None)
    assert "supersedes only a retracted ranking" in refused(insert, s=first)
    assert "already has a current ranking or skip" in refused(
        "INSERT INTO skips (prompt_id, annotator_id, reason, created_at) VALUES (1, 1, 'x', 0)"
    )
    undone = store.undo("alice")
    second = store.submit_ranking("alice", undone.lease.token, [2, 1])
    assert "only a current ranking can be retracted" in refused(
        "INSERT INTO retractions (ranking_id, annotator_id, created_at) VALUES (:r, 1, 0)", r=first
    )
    assert [r.ranking_id for r in store.current_rankings()] == [second]
    assert_queue_agrees(store)
    store.close()


@contextmanager
def counting_steps(store: Store) -> Iterator[list[int]]:
    """Counts the SQLite virtual-machine steps run on the store's connections inside the block."""
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    def count(dbapi_connection: sqlite3.Connection, *_: object) -> None:
        dbapi_connection.set_progress_handler(step, 1)

    def stop(dbapi_connection: sqlite3.Connection, *_: object) -> None:
        dbapi_connection.set_progress_handler(None, 1)

    pool = store.database.engine.pool
    event.listen(pool, "checkout", count)
    event.listen(pool, "checkin", stop)
    try:
        yield steps
    finally:
        event.remove(pool, "checkout", count)
        event.remove(pool, "checkin", stop)


def work_per_action(path: Path, prompts: int) -> dict[str, int]:
    """Steps for one lease, submit, undo and progress on a store with `prompts` prompts, half of
    them complete (2 rankings each), where annotator00 has alone ranked a tenth of them, the
    day before (the case of one annotator far ahead of the others)."""
    clock = Clock()
    store = bulk_store(path, prompts, complete=prompts // 2)
    store.clock = clock
    for _ in range(prompts // 10):  # annotator00 runs ahead, through the public calls
        lease = store.lease("annotator00", 2)
        store.submit_ranking("annotator00", lease.token, [1, 2, 3, 4], per_prompt=2)
    clock.now += 86_400  # a day later: "done today" counts today's work only
    work: dict[str, int] = {}
    actions: list[tuple[str, Callable[[], object]]] = []
    for name in ("annotator00", "annotator07"):  # the one far ahead, and one of the others
        held: dict[str, object] = {}
        actions += [
            (f"lease {name}", lambda name=name, held=held: held.update(lease=store.lease(name, 2))),
            (
                f"submit {name}",
                lambda name=name, held=held: store.submit_ranking(
                    name, held["lease"].token, [4, 3, 2, 1], per_prompt=2
                ),
            ),
            (f"undo {name}", lambda name=name: store.undo(name)),
            (f"progress {name}", lambda name=name: store.progress(name, 2, clock.now - 60)),
        ]
    for label, action in actions:
        with counting_steps(store) as steps:
            action()
        work[label] = steps[0]
    store.close()
    return work


def test_lease_submit_undo_and_progress_do_the_same_work_at_any_size(tmp_path: Path) -> None:
    small = work_per_action(tmp_path / "small.db", 1_000)
    large = work_per_action(tmp_path / "large.db", 20_000)
    # Twenty times the prompts, and twenty times as far ahead: exactly the same work.
    assert large == small
