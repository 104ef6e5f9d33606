"""The benchmarks run for anyone: from a virtual environment, with nothing on PATH but what that
environment has, and `--dry-run` checking the environment in seconds."""

import subprocess
import venv

from tests.conftest import ROOT


def test_ppo_benchmark_dry_run_from_a_virtual_environment(tmp_path):
    """The TRL side is this interpreter with TRL 1.12.0 first on its path (no second venv that
    would see only the base interpreter's packages), so it imports this environment's torch."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
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
