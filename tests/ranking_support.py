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
from pathlib import Path

import httpx
from alignment.ui.annotators import Annotator, hash_password, save_annotators

from alignment.store import NewCandidate, Store, display_order

PASSWORDS = {
    "alice": "alice-secret",
    "bob": "bob-secret-2",
    "carol": "carol-admin-pw",
}
ROLES = {"alice": "annotator", "bob": "annotator", "carol": "admin"}
SETTINGS = {"max_new_tokens": 32, "temperature": 0.8, "top_k": 0, "top_p": 0.95}


def user_prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def fill_store(path: Path, prompts: list[tuple[str, list[str]]]) -> Store:
    """A store whose prompt i+1 is prompts[i] with the given candidate texts (positions 0..K-1)."""
    store = Store(path)
    for number, (text, answers) in enumerate(prompts, start=1):
        store.add_sampled(
            user_prompt(text),
            [
                NewCandidate(answer, "tiny-test-model", SETTINGS, seed=number * 100 + i)
                for i, answer in enumerate(answers)
            ],
            source=f"prompts.jsonl:{number}",
        )
    return store


class Clock:
    """A settable clock, so lease expiry is tested without waiting."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def annotated_store(path: Path, clock: Clock) -> Store:
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


def ranked_store(path: Path) -> Store:
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


def spawn_server(
    db: Path, annotators: Path, port: int, log: Path, per_prompt: int = 2
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
    db: Path, annotators: Path, port: int, log: Path, per_prompt: int = 2
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
