"""Helpers shared by the ranking tests: databases with known candidates (and rankings), a settable
clock, expected export rows, annotators files, and the app served for real (in this process or as
an `align ui` subprocess), on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from alignment.ui.annotators import Annotator, hash_password, save_annotators
from sqlalchemy import text

from alignment.store import NewCandidate, Store, display_order, prompt_key, queueing

if TYPE_CHECKING:
    from alignment.ui.service import RankingService

PASSWORDS = {
    "alice": "alice-secret",
    "bob": "bob-secret-2",
    "carol": "carol-admin-pw",
}
ROLES = {"alice": "annotator", "bob": "annotator", "carol": "admin"}
SETTINGS = {"max_new_tokens": 32, "temperature": 0.8, "top_k": 0, "top_p": 0.95}


def user_prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def fill_store(target: Path | str, prompts: list[tuple[str, list[str]]]) -> Store:
    """A store (an SQLite path or a PostgreSQL URL) whose prompt i+1 is prompts[i] with the given
    candidate texts (positions 0..K-1)."""
    store = Store(target)
    for number, (question, answers) in enumerate(prompts, start=1):
        store.add_sampled(
            user_prompt(question),
            [
                NewCandidate(answer, "tiny-test-model", SETTINGS, seed=number * 100 + i)
                for i, answer in enumerate(answers)
            ],
            source=f"prompts.jsonl:{number}",
        )
    return store


FILLER = "The answer explains the point step by step, with an example and a short summary. "


def answer_text(prompt: int, position: int, chars: int) -> str:
    """A distinct answer of about `chars` characters (300: roughly a 64-token sampled answer)."""
    head = f"Answer {position} to question {prompt}. "
    return head + (FILLER * (chars // len(FILLER) + 1))[: max(0, chars - len(head))]


def bulk_store(
    target: Path | str,
    prompts: int,
    complete: int,
    per_prompt: int = 2,
    k: int = 4,
    annotators: int = 20,
    answer_chars: int = 0,
    chunk: int = 50_000,
) -> Store:
    """A big store (an SQLite path or a PostgreSQL URL), built fast: `prompts` prompts of K
    answers (`answer_text`), the first `complete` of them ranked by `per_prompt` of the
    annotators `annotator00`, `annotator01`, ... each. Rows go in by bulk inserts, `chunk`
    prompts per transaction, then the queue tables are computed once (`queueing.rebuild`)."""
    names = [f"annotator{i:02d}" for i in range(annotators)]
    store = Store(target)
    store.sync_annotators([(name, "annotator") for name in names])
    with store.database.read() as conn:
        ids = dict(conn.execute(text("SELECT name, id FROM annotators")).all())
    settings = json.dumps(SETTINGS, sort_keys=True)
    for first in range(1, prompts + 1, chunk):
        numbers = range(first, min(first + chunk, prompts + 1))
        ranked = [(n, j) for n in numbers if n <= complete for j in range(per_prompt)]
        with store.database.write() as write:
            write.execute(
                text(
                    "INSERT INTO prompts (id, key, messages, source, created_at) "
                    "VALUES (:id, :key, :messages, NULL, 0)"
                ),
                [
                    {
                        "id": n,
                        "key": prompt_key(user_prompt(f"q{n}")),
                        "messages": json.dumps(user_prompt(f"q{n}")),
                    }
                    for n in numbers
                ],
            )
            write.execute(
                text(
                    "INSERT INTO candidates (id, prompt_id, position, text, model, settings, seed, "
                    "created_at) VALUES (:id, :p, :j, :text, 'bulk-model', :settings, :j, 0)"
                ),
                [
                    {
                        "id": n * k + j,
                        "p": n,
                        "j": j,
                        "text": answer_text(n, j, answer_chars),
                        "settings": settings,
                    }
                    for n in numbers
                    for j in range(k)
                ],
            )
            if not ranked:
                continue
            write.execute(
                text(
                    "INSERT INTO rankings (id, prompt_id, annotator_id, tie, created_at) "
                    "VALUES (:id, :p, :a, 0, :p)"
                ),
                [
                    {"id": n * per_prompt + j, "p": n, "a": ids[names[(n + j) % annotators]]}
                    for n, j in ranked
                ],
            )
            write.execute(
                text(
                    "INSERT INTO ranking_items (ranking_id, candidate_id, rank) "
                    "VALUES (:r, :c, :rank)"
                ),
                [
                    {"r": n * per_prompt + j, "c": n * k + c, "rank": (c + n + j) % k + 1}
                    for n, j in ranked
                    for c in range(k)
                ],
            )
    with store.database.write() as write:
        queueing.rebuild(write)
        if store.database.dialect == "postgresql":  # ids were given: move the sequences on
            for table in ("prompts", "candidates", "rankings"):
                write.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    if store.database.dialect == "postgresql":
        # As a database in use would be: planner statistics and the visibility map up to date,
        # rather than autovacuum catching up on the bulk load while it is measured.
        with store.database.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    return store


def sql(store: Store, query: str, params: dict | None = None) -> list[tuple]:
    """Rows of a read-only query on the store's database, as plain tuples."""
    with store.database.read() as conn:
        return [tuple(row) for row in conn.execute(text(query), params or {})]


class Clock:
    """A settable clock, so lease expiry is tested without waiting."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def annotated_store(path: Path | str, clock: Clock) -> Store:
    """Prompts p1 and p2 with four answers, p3 with three; annotators alice and bob, admin carol;
    time from `clock`."""
    store = fill_store(
        path,
        [
            ("p1", ["a0", "a1", "a2", "a3"]),
            ("p2", ["b0", "b1", "b2", "b3"]),
            ("p3", ["c0", "c1", "c2"]),
        ],
    )
    store.clock = clock
    store.sync_annotators([("alice", "annotator"), ("bob", "annotator"), ("carol", "admin")])
    return store


def by_position(name: str, prompt_id: int, ranks_by_position: list[int]) -> list[int]:
    """Ranks in `name`'s display order, from ranks written by sampling position."""
    return [ranks_by_position[p] for p in display_order(name, prompt_id, len(ranks_by_position))]


def ranked_store(path: Path | str) -> Store:
    """An annotated_store whose prompt 1 is ranked by alice (with a tie) and bob, and prompt 2 by
    alice only, one second apart."""
    clock = Clock()
    db = annotated_store(path, clock)
    a = db.lease("alice", per_prompt=2)
    db.submit_ranking(
        "alice", a.token, by_position("alice", 1, [1, 2, 2, 3]), tie=True, per_prompt=2
    )
    clock.now += 1
    b = db.lease("bob", per_prompt=2)
    db.submit_ranking("bob", b.token, by_position("bob", 1, [2, 1, 3, 4]), per_prompt=2)
    clock.now += 1
    a2 = db.lease("alice", per_prompt=2)
    assert a2.prompt_id == 2
    db.submit_ranking("alice", a2.token, by_position("alice", 2, [4, 3, 2, 1]), per_prompt=2)
    return db


def pair(prompt: str, chosen: str, rejected: str, ranking: int, who: str, **extra) -> dict:
    """A `pairs` export row for a one-turn prompt."""
    return {
        "prompt": user_prompt(prompt),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "ranking_id": ranking,
        "annotator": who,
        **extra,
    }


def write_annotators(path: Path, passwords: dict[str, str], roles: dict[str, str]) -> Path:
    save_annotators(
        path,
        {
            name: Annotator(name, roles.get(name, "annotator"), hash_password(pw), 0)
            for name, pw in passwords.items()
        },
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(
    url: str, process: subprocess.Popen | None = None, limit: float = 90
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a port that is not up yet; nothing to wait on instead
    raise TimeoutError(f"{url} did not answer within {limit}s")


Serve = Callable[..., "tuple[str, RankingService]"]


@contextmanager
def served_apps(root: Path) -> Iterator[Serve]:
    """`start(prompts=None, per_prompt=2)` serves the app in this process, on 127.0.0.1, on a
    fresh database `root/rankings.db` holding `prompts` (default: p1..p6, four answers each) and
    the annotators alice, bob and carol; it returns the URL (ending in '/') and the service.
    Every app started is stopped on leaving."""
    from alignment.ui.app import launch  # gradio: only for the tests that serve the app

    demos = []

    def start(
        prompts: list[tuple[str, list[str]]] | None = None, per_prompt: int = 2
    ) -> tuple[str, RankingService]:
        prompts = prompts or [(f"p{i}", [f"p{i}-a{j}" for j in range(4)]) for i in range(1, 7)]
        fill_store(root / "rankings.db", prompts).close()
        write_annotators(root / "annotators.yaml", PASSWORDS, ROLES)
        port = free_port()
        demo, service = launch(
            root / "rankings.db",
            annotators=root / "annotators.yaml",
            port=port,
            per_prompt=per_prompt,
            block=False,
        )
        demos.append(demo)
        return f"http://127.0.0.1:{port}/", service

    try:
        yield start
    finally:
        for demo in demos:
            demo.close()


def spawn_server(
    db: Path | str, annotators: Path, port: int, log: Path, per_prompt: int = 2
) -> subprocess.Popen:
    """`align ui` as a real separate process (so it can be SIGKILLed); not yet serving."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [
        sys.executable,
        "-m",
        "alignment.cli",
        "ui",
        "--db",
        str(db),
        "--annotators",
        str(annotators),
        "--port",
        str(port),
        "--per-prompt",
        str(per_prompt),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def start_server(
    db: Path | str, annotators: Path, port: int, log: Path, per_prompt: int = 2
) -> subprocess.Popen:
    process = spawn_server(db, annotators, port, log, per_prompt)
    wait_until_serving(f"http://127.0.0.1:{port}/", process)
    return process


class ApiSession:
    """Gradio's documented HTTP API (POST /gradio_api/call/NAME, then read the event stream),
    signed in with a session cookie: lighter than gradio_client for many concurrent callers."""

    def __init__(self, base: str, name: str, password: str, timeout: float = 60) -> None:
        self.http = httpx.Client(base_url=base, timeout=timeout)
        response = self.http.post("/login", data={"username": name, "password": password})
        response.raise_for_status()

    def call(self, api_name: str, *args: object) -> object:
        """The endpoint's return value; raises ApiError with the app's message on refusal."""
        response = self.http.post(f"/gradio_api/call/{api_name}", json={"data": list(args)})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        with self.http.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as stream:
            event = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    data = json.loads(line.split(":", 1)[1])
                    if event == "error":
                        raise ApiError(data.get("error") if isinstance(data, dict) else str(data))
                    return data[0]
        raise ApiError(f"{api_name}: stream ended without a result")

    def close(self) -> None:
        self.http.close()


class ApiError(Exception):
    pass
