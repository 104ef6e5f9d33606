"""Ranking store and app: submit rate and latency under concurrent load, cost per action at 1k and
1M prompts, and export rate at 100k.

    python bench/ranking_load.py [--clients 20] [--per-client 25] [--sizes 1000 1000000]
                                 [--rankings 100000] [--postgres URL]

1. A real `align ui` process on 127.0.0.1 with a fresh database; CLIENTS annotator threads sign
   in, lease via /next, then each submits PER_CLIENT rankings through /submit (which stores the
   ranking and leases the next prompt in one transaction, as the page does). Prints rankings/s
   and p50/p95/p99 of /submit as the client sees it, then checks that every acknowledged ranking
   is stored exactly once. Baselines, same run, same database shape, same thread count, no HTTP:
   the store's `lease` + `submit_ranking`, and `submit_and_next` (the store call /submit makes).
2. Flat cost: a store of 1,000 and one of 1,000,000 prompts (K=4), half of each complete (2
   rankings per prompt), built by bulk inserts (`bulk_store`); then, in this process, one thread,
   the public calls with `synchronous=FULL`: `lease` + `submit_ranking` cycles over 20
   annotators, then `undo` (each followed by a new submission) and `progress`. Prints p50/p95
   of each at both sizes and the 1M / 1k ratio. With `--postgres URL` (a server where that
   user may CREATE DATABASE), the same on PostgreSQL, each size in a database of its own that
   the benchmark makes and drops.
3. A database with 100k rankings (K=4, 2 annotators per prompt, `bulk_store`), then
   `export_rows` written to JSONL in both formats, as rows/s. Baseline: reading
   `current_rankings()` alone, no JSON.

The load reuses the load test's helpers (tests/ranking_support.py, tests/test_ui_load.py). Every
loop is bounded in count and time; the only address used is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from common import ROOT, machine

# tests/ is not an installed package: import the load test's helpers from this checkout.
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, make_url

from alignment.export import export_rows, write_jsonl
from alignment.store import Store
from tests.ranking_support import (
    ApiSession,
    answer_text,
    bulk_store,
    fill_store,
    free_port,
    spawn_server,
    wait_until_serving,
    write_annotators,
)
from tests.test_ui_load import (
    CLIENTS,
    PER_CLIENT,
    PROMPTS,
    K,
    assert_acknowledged_are_stored,
    stored_rankings,
)

PER_PROMPT = 2  # annotators per prompt, as in the load test


def prompt_specs(count: int, chars: int) -> list[tuple[str, list[str]]]:
    return [
        (f"Question {n}: explain item {n} briefly.", [answer_text(n, j, chars) for j in range(K)])
        for n in range(1, count + 1)
    ]


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (to see who used the 2 cores)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadRun:
    label: str
    latencies: list[float] = field(default_factory=list)  # seconds per ranking
    acked: list[tuple[str, int, int, dict[str, int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    load: str = ""

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


def run_clients(
    run: LoadRun,
    names: list[str],
    client: Callable[[str, random.Random, threading.Barrier, LoadRun, threading.Lock], None],
    deadline: float,
) -> None:
    """One thread per annotator; all start submitting together (a barrier), so the wall time
    covers only the concurrent submissions, not sign-in."""
    lock = threading.Lock()
    barrier = threading.Barrier(len(names) + 1)

    def guarded(name: str, seed: int) -> None:
        try:
            client(name, random.Random(seed), barrier, run, lock)
        except Exception as err:  # collected and reported; the run fails on any
            barrier.abort()
            with lock:
                run.errors.append(f"{name}: {type(err).__name__}: {err}")

    threads = [
        threading.Thread(target=guarded, args=(name, i), daemon=True)
        for i, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    # Broken: a client failed before starting; its error is in run.errors.
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 65)  # +1 HTTP timeout
    run.wall = time.perf_counter() - started
    run.load = load_average()
    hung = sum(thread.is_alive() for thread in threads)
    if hung:
        run.errors.append(f"{hung} clients still running at the deadline")


def http_load(args: argparse.Namespace, work: Path, deadline: float) -> tuple[LoadRun, str]:
    """The app under load: returns the run and the verification summary."""
    db, log = work / "http.db", work / "server.log"
    names = [f"annotator{i:02d}" for i in range(args.clients)]
    passwords = {name: f"{name}-password" for name in names}
    write_annotators(work / "annotators.yaml", passwords, {})
    port = free_port()
    # The server imports gradio (seconds) while the prompts are written, as in the load test.
    server = spawn_server(db, work / "annotators.yaml", port, log, per_prompt=PER_PROMPT)
    run = LoadRun(f"HTTP /submit, `align ui`, {args.clients} client threads")
    try:
        fill_store(db, prompt_specs(args.prompts, args.answer_chars)).close()
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/", server, limit=max(1.0, min(120, deadline - time.monotonic())))

        def client(name: str, rng: random.Random, barrier: threading.Barrier, run: LoadRun, lock):
            session = ApiSession(url, name, passwords[name], timeout=60)
            try:
                lease = session.call("next")
                barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
                for _ in range(args.per_client):
                    if lease is None or time.monotonic() > deadline:
                        break
                    ranks = rng.sample(range(1, K + 1), K)
                    started = time.perf_counter()
                    result = session.call("submit", lease["token"], ranks, False)
                    elapsed = time.perf_counter() - started
                    by_text = dict(zip(lease["answers"], ranks, strict=True))
                    with lock:
                        run.latencies.append(elapsed)
                        run.acked.append((name, lease["prompt_id"], result["ranking_id"], by_text))
                    lease = result["next"]
            finally:
                session.close()

        cpu_server, cpu_here = cpu_seconds(server.pid), time.process_time()
        run_clients(run, names, client, deadline)
        cpu_server = cpu_seconds(server.pid) - cpu_server
        cpu_here = time.process_time() - cpu_here
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    cpu = (
        f"CPU during the load window: server {cpu_server:.1f} s, clients {cpu_here:.1f} s "
        "(includes sign-in)"
    )
    return run, f"{verify(run, db, log, names)}; {cpu}"


def verify(run: LoadRun, db: Path, log: Path, names: list[str]) -> str:
    """Every acknowledged ranking stored exactly once, with the ranks the client sent."""
    ids = [ranking_id for _, _, ranking_id, _ in run.acked]
    stored = stored_rankings(db)
    problems = []
    if len(set(ids)) != len(ids):
        problems.append("an acknowledged ranking id came back twice")
    if set(stored) != set(ids):
        problems.append(f"{len(set(ids) - set(stored))} lost, {len(set(stored) - set(ids))} extra")
    try:
        assert_acknowledged_are_stored(run.acked, stored)
    except (AssertionError, KeyError) as err:
        problems.append(f"stored ranking differs from the one acknowledged: {err}")
    per_pair = Counter((name, prompt) for name, prompt, _ in stored.values())
    if per_pair and max(per_pair.values()) > 1:
        problems.append("an annotator ranked the same prompt twice")
    per_prompt = Counter(prompt for _, prompt, _ in stored.values())
    if per_prompt and max(per_prompt.values()) > PER_PROMPT:
        problems.append(f"a prompt got more than {PER_PROMPT} annotators")
    if "Traceback" in log.read_text(errors="replace"):
        problems.append(f"traceback in {log}")
    store = Store(db)
    integrity = store.integrity_check()
    store.close()
    if integrity != "ok":
        problems.append(f"integrity_check: {integrity}")
    if problems:
        run.errors.extend(problems)
        return "verification FAILED: " + "; ".join(problems)
    return (
        f"verified: {len(ids)} acknowledged = {len(stored)} stored, each exactly once, ranks as "
        f"sent; integrity_check ok; {len(names)} annotators"
    )


def store_load(args: argparse.Namespace, work: Path, deadline: float, combined: bool) -> LoadRun:
    """The same load straight on the store, in this process: no HTTP, no Gradio."""
    call = "submit_and_next" if combined else "lease + submit_ranking"
    run = LoadRun(f"in-process `{call}`, {args.clients} threads (baseline)")
    db = work / f"store-{'combined' if combined else 'split'}.db"
    names = [f"annotator{i:02d}" for i in range(args.clients)]
    store = fill_store(db, prompt_specs(args.prompts, args.answer_chars))
    store.sync_annotators([(name, "annotator") for name in names])

    def client(name: str, rng: random.Random, barrier: threading.Barrier, run: LoadRun, lock):
        lease = store.lease(name, PER_PROMPT) if combined else None
        barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
        for _ in range(args.per_client):
            if time.monotonic() > deadline:
                break
            ranks = rng.sample(range(1, K + 1), K)
            started = time.perf_counter()
            if combined:
                if lease is None:
                    break
                _, lease = store.submit_and_next(name, lease.token, ranks, False, PER_PROMPT)
            else:
                current = store.lease(name, PER_PROMPT)
                if current is None:
                    break
                store.submit_ranking(name, current.token, ranks, False, PER_PROMPT)
            elapsed = time.perf_counter() - started
            with lock:
                run.latencies.append(elapsed)

    run_clients(run, names, client, deadline)
    store.close()
    return run


@dataclass
class Timed:
    label: str
    rows: int
    seconds: float
    megabytes: float | None = None
    load: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def timed(label: str, fn: Callable[[], int], out: Path | None = None) -> Timed:
    started = time.perf_counter()
    rows = fn()
    seconds = time.perf_counter() - started
    size = out.stat().st_size / 1e6 if out is not None else None
    return Timed(label, rows, seconds, size, load_average())


def build_export_db(args: argparse.Namespace, db: Path) -> Timed:
    """The export database: rankings/PER_PROMPT prompts, each ranked by PER_PROMPT annotators."""
    prompts = math.ceil(args.rankings / PER_PROMPT)

    def build() -> int:
        bulk_store(db, prompts, prompts, PER_PROMPT, K, answer_chars=args.answer_chars).close()
        return prompts * PER_PROMPT

    return timed(f"build: {prompts} prompts x {K} answers, all ranked, `bulk_store`", build)


@dataclass
class FlatRun:
    """Latencies (seconds) of the public calls on a store of `prompts` prompts."""

    prompts: int
    build_seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    load: str = ""

    def time(self, label: str, call: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = call()
        self.latencies.setdefault(label, []).append(time.perf_counter() - started)
        return result


FLAT_LABELS = ("lease + submit", "lease", "submit", "undo", "progress")


@contextlib.contextmanager
def flat_database(work: Path, prompts: int, server: str | None) -> Iterator[Path | str]:
    """An empty database for the flat-cost part: an SQLite file in `work`, or a new database
    on the PostgreSQL `server`; removed afterwards (the 1M one is about a gigabyte)."""
    if server is None:
        yield work / f"flat-{prompts}.db"
        for path in work.glob(f"flat-{prompts}.db*"):
            path.unlink()
        return
    name = f"bench_flat_{prompts}"
    admin = create_engine(
        make_url(server).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def flat_cost(
    args: argparse.Namespace, work: Path, prompts: int, server: str | None = None
) -> FlatRun:
    """Public calls, one thread, on a store of `prompts` prompts with half of them complete
    (SQLite, or PostgreSQL on `server`)."""
    with flat_database(work, prompts, server) as db:
        return measure_flat(args, db, prompts)


def measure_flat(args: argparse.Namespace, db: Path | str, prompts: int) -> FlatRun:
    started = time.perf_counter()
    store = bulk_store(db, prompts, prompts // 2, PER_PROMPT, K)
    run = FlatRun(prompts, time.perf_counter() - started)
    names = [f"annotator{i:02d}" for i in range(20)]
    rng = random.Random(prompts)
    for cycle in range(args.cycles):
        name = names[cycle % len(names)]
        started = time.perf_counter()
        lease = run.time("lease", lambda name=name: store.lease(name, PER_PROMPT))
        ranks = rng.sample(range(1, K + 1), K)
        run.time(
            "submit",
            lambda name=name, lease=lease, ranks=ranks: store.submit_ranking(
                name, lease.token, ranks, False, PER_PROMPT
            ),
        )
        run.latencies.setdefault("lease + submit", []).append(time.perf_counter() - started)
        run.time("progress", lambda name=name: store.progress(name, PER_PROMPT, time.time() - 3600))
    for cycle in range(args.cycles // 4):
        name = names[cycle % len(names)]
        undone = run.time("undo", lambda name=name: store.undo(name))
        store.submit_ranking(name, undone.lease.token, [1, 2, 3, 4], False, PER_PROMPT)
    run.load = load_average()
    store.close()
    return run


def export_bench(args: argparse.Namespace, work: Path) -> list[Timed]:
    db = work / "export.db"
    steps = [build_export_db(args, db)]
    store = Store(db)
    pairs_per_ranking = K * (K - 1) // 2

    def read_only() -> int:
        return sum(1 for _ in store.current_rankings())

    steps.append(timed("baseline: iterate `current_rankings()`, no JSON", read_only))
    for fmt in ("rankings", "pairs"):
        out = work / f"{fmt}.jsonl"
        steps.append(
            timed(
                f"export `{fmt}`: `write_jsonl(export_rows(store, {fmt!r}))`",
                lambda fmt=fmt, out=out: write_jsonl(export_rows(store, fmt), out),
                out,
            )
        )
        out.unlink()  # hundreds of MB; the size is recorded
    store.close()
    assert steps[-1].rows == args.rankings * pairs_per_ranking, steps[-1].rows
    return steps


def print_flat(runs: list[FlatRun], database: str) -> None:
    print(
        f"## {database}: cost per call at {' and '.join(f'{r.prompts:,}' for r in runs)} prompts: "
        f"half complete ({PER_PROMPT} rankings each), K={K}, public calls, one thread"
    )
    header = " | ".join(f"{label} p50 / p95 ms" for label in FLAT_LABELS)
    print(f"| prompts | build s | {header} | load avg after |")
    print("| --- " * (len(FLAT_LABELS) + 3) + "|")
    for run in runs:
        cells = []
        for label in FLAT_LABELS:
            ms = [x * 1000 for x in run.latencies[label]]
            cells.append(f"{percentile(ms, 50):.1f} / {percentile(ms, 95):.1f}")
        print(f"| {run.prompts:,} | {run.build_seconds:.0f} | {' | '.join(cells)} | {run.load} |")
    first, last = runs[0], runs[-1]
    ratios = ", ".join(
        f"{label} {percentile(last.latencies[label], 95) / percentile(first.latencies[label], 95):.2f}x"
        for label in FLAT_LABELS
    )
    counts = ", ".join(f"{label} {len(first.latencies[label])}" for label in FLAT_LABELS)
    print(f"p95 at {last.prompts:,} / p95 at {first.prompts:,}: {ratios}")
    print(f"calls timed per size: {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--per-client", type=int, default=PER_CLIENT)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000, 1_000_000], help="prompts, flat-cost part"
    )
    parser.add_argument("--cycles", type=int, default=1000, help="lease+submit per size")
    parser.add_argument("--rankings", type=int, default=100_000, help="for the export part")
    parser.add_argument("--answer-chars", type=int, default=300, help="length of each answer")
    parser.add_argument("--time-limit", type=float, default=150, help="seconds, per load run")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp directory")
    parser.add_argument(
        "--postgres", metavar="URL", help="also the flat-cost part on this PostgreSQL server"
    )
    args = parser.parse_args()
    # Room for every client's rankings with PER_PROMPT annotators per prompt (the load test's 600
    # prompts unless more clients or rankings ask for more).
    args.prompts = max(PROMPTS, math.ceil(1.2 * args.clients * args.per_client / PER_PROMPT))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-ranking-"))
    work.mkdir(parents=True, exist_ok=True)
    start_load = load_average()
    started = time.perf_counter()

    http, verification = http_load(args, work, time.monotonic() + args.time_limit)
    split = store_load(args, work, time.monotonic() + args.time_limit, combined=False)
    combined = store_load(args, work, time.monotonic() + args.time_limit, combined=True)
    flat = [flat_cost(args, work, size) for size in args.sizes]
    flat_postgres = (
        [flat_cost(args, work, size, args.postgres) for size in args.sizes] if args.postgres else []
    )
    export_steps = export_bench(args, work)

    total = time.perf_counter() - started
    print(f"# Ranking store and app benchmark, {date.today()}, {machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"load average (1/5/15 min) at start {start_load}, at end {load_average()}")
    print()
    print(
        f"## Submit under load: {args.clients} clients x {args.per_client} rankings, K={K}, "
        f"{args.prompts} prompts, {PER_PROMPT} annotators per prompt, answers ~{args.answer_chars} chars"
    )
    print(
        "| run | rankings | wall s | rankings/s | p50 ms | p95 ms | p99 ms | HTTP rate / this | load avg after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")  # fmt: skip
    for run in (http, split, combined):
        lat = [x * 1000 for x in run.latencies]
        cells = [f"{percentile(lat, q):.0f}" for q in (50, 95, 99)] if len(lat) > 1 else ["-"] * 3
        ratio = f"{http.rate / run.rate:.2f}x" if run.rate else "-"
        print(
            f"| {run.label} | {len(run.latencies)} | {run.wall:.1f} | {run.rate:.1f} | "
            f"{' | '.join(cells)} | {ratio} | {run.load} |"
        )
    print(verification)
    print(
        "HTTP latency: POST /gradio_api/call/submit until the result event, as the client sees "
        "it; the store baselines time the store calls for one ranking (lease included)."
    )
    print()
    print_flat(flat, "SQLite (WAL, synchronous=FULL)")
    if flat_postgres:
        print()
        print_flat(flat_postgres, "PostgreSQL (same machine, unix socket, fsync on)")
    print()
    print(f"## Export of {args.rankings} rankings (K={K}, no ties)")
    print("| step | rows | s | rows/s | file MB | load avg after |")
    print("| --- | --- | --- | --- | --- | --- |")
    for step in export_steps:
        size = f"{step.megabytes:.0f}" if step.megabytes is not None else "-"
        print(
            f"| {step.label} | {step.rows} | {step.seconds:.1f} | {step.rate:.0f} | {size} | {step.load} |"
        )
    read, rankings, pairs = export_steps[-3:]
    print(
        f"pairs export: {pairs.rate:.0f} pairs/s = {pairs.rate / (K * (K - 1) // 2):.0f} rankings/s, "
        f"{pairs.seconds / read.seconds:.1f}x the bare read time; rankings export "
        f"{rankings.seconds / read.seconds:.1f}x the bare read time"
    )
    print(f"total benchmark wall time {total:.0f} s; work dir {work}")
    sys.stdout.flush()
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    if http.errors or split.errors or combined.errors:
        for error in http.errors + split.errors + combined.errors:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
