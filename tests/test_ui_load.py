"""Load and crash: 20 concurrent annotators submit 25 rankings each to a real `align ui` process on
127.0.0.1; every ranking is stored once. Then the server is SIGKILLed mid-load and restarted: the
database is intact and every acknowledged ranking is in it.

Clients use Gradio's HTTP API (/gradio_api/call/...) directly: the same endpoints gradio_client
calls, with less client overhead, so 20 of them fit on a 2-core machine beside the server. All
loops are bounded in count and time.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio")

from alignment.store import NewCandidate, Store
from tests.ranking_support import (
    SETTINGS,
    ApiError,
    ApiSession,
    free_port,
    spawn_server,
    sql,
    start_server,
    user_prompt,
    wait_until_serving,
    write_annotators,
)

CLIENTS = 20
PER_CLIENT = 25
PROMPTS = 600  # 2 annotators each: room for both rounds below
K = 4


def make_store(path: Path | str, prompts: int = PROMPTS) -> None:
    store = Store(path)
    for n in range(1, prompts + 1):
        store.add_sampled(
            user_prompt(f"prompt {n}"),
            [NewCandidate(f"p{n}-a{j}", "tiny", SETTINGS, seed=j) for j in range(K)],
        )
    store.close()


class Round:
    """One round of CLIENTS annotators, each submitting up to PER_CLIENT rankings."""

    def __init__(self, url: str, names: list[str], passwords: dict[str, str]) -> None:
        self.url, self.names, self.passwords = url, names, passwords
        self.acked: list[tuple[str, int, int, dict[str, int]]] = []  # name, prompt, id, ranks
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.reached = threading.Event()
        self.signal_at: int | None = None

    def worker(self, name: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            session = ApiSession(self.url, name, self.passwords[name], timeout=60)
            lease = session.call("next")
            for _ in range(PER_CLIENT):
                assert lease is not None, f"{name}: queue ran dry"
                ranks = rng.sample(range(1, K + 1), K)
                result = session.call("submit", lease["token"], ranks, False)
                by_text = dict(zip(lease["answers"], ranks, strict=True))
                with self.lock:
                    self.acked.append((name, lease["prompt_id"], result["ranking_id"], by_text))
                    if self.signal_at is not None and len(self.acked) >= self.signal_at:
                        self.reached.set()
                lease = result["next"]
            session.close()
        except Exception as err:  # every failure is collected and asserted on by the test
            with self.lock:
                self.errors.append(f"{name}: {type(err).__name__}: {err}")

    def run(self, signal_at: int | None = None, on_signal=None) -> None:
        self.signal_at = signal_at
        threads = [
            threading.Thread(target=self.worker, args=(name, i), daemon=True)
            for i, name in enumerate(self.names)
        ]
        for thread in threads:
            thread.start()
        if signal_at is not None:
            assert self.reached.wait(timeout=120), f"only {len(self.acked)} rankings acknowledged"
            on_signal()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a client hung"


def stored_rankings(db: Path | str) -> dict[int, tuple[str, int, dict[str, int]]]:
    """{ranking id: (annotator, prompt, {answer text: rank})} of every stored ranking."""
    store = Store(db)
    rows = sql(
        store,
        "SELECT r.id, a.name, r.prompt_id, c.text, i.rank FROM rankings r "
        "JOIN annotators a ON a.id = r.annotator_id "
        "JOIN ranking_items i ON i.ranking_id = r.id JOIN candidates c ON c.id = i.candidate_id",
    )
    store.close()
    stored: dict[int, tuple[str, int, dict[str, int]]] = {}
    for ranking_id, name, prompt_id, text, rank in rows:
        stored.setdefault(ranking_id, (name, prompt_id, {}))[2][text] = rank
    return stored


def assert_acknowledged_are_stored(acked: list, stored: dict) -> None:
    for name, prompt_id, ranking_id, ranks in acked:
        assert stored[ranking_id] == (name, prompt_id, ranks), f"ranking {ranking_id} differs"


def test_concurrent_load_then_sigkill_and_restart(tmp_path: Path) -> None:
    db = tmp_path / "rankings.db"
    names = [f"annotator{i:02d}" for i in range(CLIENTS)]
    passwords = {name: f"{name}-password" for name in names}
    write_annotators(tmp_path / "annotators.yaml", passwords, {})
    log = tmp_path / "server.log"
    port = free_port()
    # The server starts up (imports take seconds) while the prompts are written.
    server = spawn_server(db, tmp_path / "annotators.yaml", port, log, per_prompt=2)
    try:
        make_store(db)
        wait_until_serving(f"http://127.0.0.1:{port}/", server)
        # Round 1: 20 clients x 25 rankings, all the way through.
        first = Round(f"http://127.0.0.1:{port}", names, passwords)
        first.run()
        assert first.errors == []
        assert len(first.acked) == CLIENTS * PER_CLIENT
        ids = [ranking_id for _, _, ranking_id, _ in first.acked]
        assert len(set(ids)) == len(ids)  # none doubled
        stored = stored_rankings(db)
        assert set(stored) == set(ids)  # none lost, none extra
        assert_acknowledged_are_stored(first.acked, stored)
        assert Counter(name for name, _, _ in stored.values()) == dict.fromkeys(names, PER_CLIENT)
        per_prompt = Counter(prompt for _, prompt, _ in stored.values())
        assert max(per_prompt.values()) <= 2  # the lease never let a third annotator in
        pairs = {(name, prompt) for name, prompt, _ in stored.values()}
        assert len(pairs) == len(stored)  # nobody ranked a prompt twice
        assert "Traceback" not in log.read_text(errors="replace")

        # Round 2: the same load, and the server is SIGKILLed once 120 more are acknowledged.
        second = Round(f"http://127.0.0.1:{port}", names, passwords)
        second.run(signal_at=120, on_signal=lambda: os.kill(server.pid, signal.SIGKILL))
        server.wait(timeout=30)
        assert server.returncode == -signal.SIGKILL
        assert len(second.acked) >= 120
        assert len(second.errors) > 0  # the clients in flight saw the server die
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)

    # The file opens intact and holds every acknowledged ranking, before and after a restart.
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()
    acked = first.acked + second.acked
    stored = stored_rankings(db)
    assert_acknowledged_are_stored(acked, stored)
    # At most the requests in flight at the kill (one per client) were stored unacknowledged.
    assert len(acked) <= len(stored) <= len(acked) + CLIENTS

    port = free_port()
    server = start_server(db, tmp_path / "annotators.yaml", port, log, per_prompt=2)
    try:
        session = ApiSession(f"http://127.0.0.1:{port}", names[0], passwords[names[0]])
        lease = session.call("next")
        result = session.call("submit", lease["token"], [1, 2, 3, 4], False)
        assert result["ranking_id"] > max(stored)
        session.close()
    finally:
        server.kill()
        server.wait(timeout=30)
    after = stored_rankings(db)
    assert_acknowledged_are_stored(acked, after)
    assert len(after) == len(stored) + 1
    assert Store(db).integrity_check() == "ok"


class Balanced:
    """A client signed in once and sent to two app processes in turn, as a load balancer would,
    with one session cookie; once a process stops answering, it keeps to the other."""

    def __init__(self, urls: list[str], name: str, password: str, first: int) -> None:
        self.urls = urls[first:] + urls[:first]
        self.session = ApiSession(self.urls[0], name, password, timeout=60)
        self.turn = 0
        self.failovers = 0

    def call(self, api_name: str, *args: object) -> object:
        while True:
            self.session.http.base_url = self.urls[self.turn % len(self.urls)]
            try:
                result = self.session.call(api_name, *args)
            except httpx.TransportError:  # that process is gone: the others carry on
                if len(self.urls) == 1:
                    raise
                self.urls.remove(str(self.session.http.base_url).rstrip("/"))
                self.failovers += 1
                continue
            self.turn += 1
            return result


def live_leases_and_rankings(db: str) -> list[tuple[int, int, int]]:
    """(prompt, current rankings, live open leases) of every prompt with either."""
    store = Store(db)
    rows = sql(
        store,
        """SELECT p.id,
             (SELECT count(*) FROM current_rankings r WHERE r.prompt_id = p.id),
             (SELECT count(*) FROM assignments s WHERE s.prompt_id = p.id
                AND s.closed_at IS NULL AND s.expires_at > :now)
           FROM prompts p""",
        {"now": time.time()},
    )
    store.close()
    return [row for row in rows if row[1] or row[2]]


def test_two_processes_on_one_postgres_database_and_one_killed(
    postgres_cluster, tmp_path: Path
) -> None:
    """Two `align ui` processes on one PostgreSQL database, 20 clients sent to both in turn:
    no slot is double-assigned and nothing acknowledged is lost; then one process is SIGKILLed
    mid-load and the other serves everyone to the end."""
    db = postgres_cluster.new_database()
    names = [f"annotator{i:02d}" for i in range(CLIENTS)]
    passwords = {name: f"{name}-password" for name in names}
    write_annotators(tmp_path / "annotators.yaml", passwords, {})
    ports = [free_port(), free_port()]
    # Both servers start up (and create the schema, one after the other) while the prompts go in.
    servers = [
        spawn_server(db, tmp_path / "annotators.yaml", port, tmp_path / f"server{i}.log")
        for i, port in enumerate(ports)
    ]
    make_store(db, prompts=200)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    acked: list[tuple[str, int, int, dict[str, int]]] = []
    errors: list[str] = []
    lock = threading.Lock()
    halfway = threading.Barrier(CLIENTS + 1)
    killed = threading.Event()
    per_phase = 5
    failovers: list[int] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        name = names[index]
        try:
            balanced = Balanced(urls, name, passwords[name], first=index % 2)
            lease = balanced.call("next")
            for phase in range(2):
                if phase == 1:
                    halfway.wait(timeout=120)
                for _ in range(per_phase):
                    assert lease is not None, f"{name}: queue ran dry"
                    ranks = rng.sample(range(1, K + 1), K)
                    try:
                        result = balanced.call("submit", lease["token"], ranks, False)
                    except ApiError as err:  # stored by the killed process, unacknowledged
                        assert killed.is_set() and "already submitted" in str(err), err
                        lease = balanced.call("next")
                        continue
                    with lock:
                        acked.append(
                            (
                                name,
                                lease["prompt_id"],
                                result["ranking_id"],
                                dict(zip(lease["answers"], ranks)),
                            )
                        )
                    lease = result["next"]
            balanced.session.close()
            with lock:
                failovers.append(balanced.failovers)
        except Exception as err:  # every failure is collected and asserted on below
            with lock:
                errors.append(f"{name}: {type(err).__name__}: {err}")
            with contextlib.suppress(threading.BrokenBarrierError):
                halfway.abort()

    try:
        for server, url in zip(servers, urls):
            wait_until_serving(f"{url}/", server)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        # Halfway: every client has its first rankings acknowledged, through both processes.
        halfway.wait(timeout=180)
        assert errors == []
        stored = stored_rankings(db)
        assert set(stored) == {ranking_id for _, _, ranking_id, _ in acked}
        assert all(ranked + leased <= 2 for _, ranked, leased in live_leases_and_rankings(db))
        # Phase 2: the first process is killed once 30 more rankings are acknowledged.
        while len(acked) < CLIENTS * per_phase + 30 and any(t.is_alive() for t in threads):
            time.sleep(0.05)  # watching the clients' progress; nothing to wait on instead
        os.kill(servers[0].pid, signal.SIGKILL)
        killed.set()
        servers[0].wait(timeout=30)
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert errors == []
        # The survivor served every client to the end, those the dead one was serving too.
        assert len(acked) >= 2 * CLIENTS * per_phase - CLIENTS
        assert sum(failovers) > 0
        assert servers[1].poll() is None
        assert "Traceback" not in (tmp_path / "server1.log").read_text(errors="replace")
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait(timeout=30)
    stored = stored_rankings(db)
    ids = [ranking_id for _, _, ranking_id, _ in acked]
    assert len(set(ids)) == len(ids)
    assert_acknowledged_are_stored(acked, stored)  # nothing acknowledged lost
    per_prompt = Counter(prompt for _, prompt, _ in stored.values())
    assert max(per_prompt.values()) <= 2  # no slot double-assigned
    assert len({(name, prompt) for name, prompt, _ in stored.values()}) == len(stored)
    assert all(ranked + leased <= 2 for _, ranked, leased in live_leases_and_rankings(db))
