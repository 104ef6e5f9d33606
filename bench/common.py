"""Shared benchmark plumbing: run a command as a child, read its own peak RSS, parse Trainer logs."""

from __future__ import annotations

import ast
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    label: str
    wall_seconds: float
    peak_rss_mib: float
    output: str  # stdout + stderr


def run_measured(
    label: str, command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Measured:
    """Run `command`, returning its wall time and the peak RSS of that child alone (wait4 rusage)."""
    log_path = Path(os.environ.get("BENCH_LOG_DIR", "/tmp")) / f"bench-{label}.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    output = log_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(
            f"{label} failed (exit {os.waitstatus_to_exitcode(status)}); log: {log_path}\n{output[-3000:]}"
        )
    return Measured(label, wall, usage.ru_maxrss / 1024, output)  # ru_maxrss is KiB on Linux


def trainer_logs(output: str) -> list[dict[str, float]]:
    """The dicts a transformers Trainer prints on each log step (its console callback)."""
    logs = []
    for line in output.replace("\r", "\n").splitlines():
        start = line.find("{'")
        if start < 0:
            continue
        try:
            record = ast.literal_eval(line[start:])
        except (ValueError, SyntaxError):
            continue
        logs.append({k: float(v) for k, v in record.items() if _is_number(v)})
    return logs


def _is_number(value: object) -> bool:
    try:
        float(value)  # transformers 5 prints some values as formatted strings
    except (TypeError, ValueError):
        return False
    return True


def machine() -> str:
    return f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
