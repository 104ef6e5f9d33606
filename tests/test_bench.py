"""The benchmarks run for anyone: from a virtual environment, with nothing on PATH but what that
environment has, and `--dry-run` checking the environment in seconds."""

import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment over this interpreter's packages, as the README's set-up makes."""
    path = tmp_path_factory.mktemp("bench") / "venv"
    venv.create(path, system_site_packages=True, with_pip=False)
    return path


@pytest.mark.parametrize(
    "script",
    [
        "cpu_dtype",
        "gpu_check",
        "quickstart",
        "ranking_load",
        "rm_hh",
        "rm_reads_prompt",
        "sft_throughput",
    ],
)
def test_every_benchmark_starts_from_a_virtual_environment(env_dir, script):
    """Its imports (the project, torch, the bench helpers) resolve from the venv's python."""
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), f"bench/{script}.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "usage:" in done.stdout


def test_ppo_benchmark_dry_run_from_a_virtual_environment(env_dir):
    """The TRL side is this interpreter with TRL 1.12.0 first on its path (no second venv that
    would see only the base interpreter's packages), so it imports this environment's torch."""
    done = subprocess.run(
        [str(env_dir / "bin" / "python"), "bench/ppo_vs_trl.py", "--dry-run", "--seeds", "42"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"TRL side: {env_dir / 'bin' / 'python'} with trl " in done.stdout
    assert "runs: 1 seed(s) x 8 updates" in done.stdout
