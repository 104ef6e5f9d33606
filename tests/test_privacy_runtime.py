"""Nothing is fetched from the Hub, or sent to it, at run time: bitsandbytes' CPU backend asks
`kernels` for a Hub kernel on CPUs with AVX512-BF16, and TRL's trainers report each run
(telemetry); `align` keeps both from doing so (see alignment/models.py).

Each check runs in a fresh interpreter that records every name lookup, socket connection and
`kernels.get_kernel` call (and fails them, so nothing leaves the machine). On a CPU without
AVX512-BF16, bitsandbytes' own capability check is made to answer yes to that one import, so the
branch that fetches runs here too; everywhere else the CPU's real answer is kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _cpu_backend_asks_the_hub() -> bool:
    """Whether the installed bitsandbytes' CPU backend calls kernels.get_kernel (0.50 does)."""
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or spec.origin is None:
        return False
    source = Path(spec.origin).parent / "backends" / "cpu" / "ops.py"
    return source.is_file() and "get_kernel(" in source.read_text()


pytestmark = pytest.mark.skipif(
    not _cpu_backend_asks_the_hub(), reason="this bitsandbytes fetches no Hub kernel on CPU"
)

RECORDER = r'''
import importlib.abc, importlib.machinery, json, socket, sys

calls = {"lookups": [], "connects": [], "get_kernel": []}


def refuse(kind, what):
    calls[kind].append(str(what))
    raise OSError(f"{kind} refused by the test: {what}")


socket.getaddrinfo = lambda host, *args, **kwargs: refuse("lookups", host)
socket.socket.connect = lambda self, address: refuse("connects", address)
socket.socket.connect_ex = lambda self, address: refuse("connects", address)

try:
    import kernels
except ImportError:  # not installed here: a stand-in, which bitsandbytes would import alike
    kernels = sys.modules["kernels"] = type(sys)("kernels")


def get_kernel(repo_id, *args, **kwargs):
    calls["get_kernel"].append(repo_id)
    raise RuntimeError(f"Hub kernel {repo_id} refused by the test")


kernels.get_kernel = get_kernel

import torch

SIMULATED = not torch.cpu._is_avx512_bf16_supported()


def asked_by_the_cpu_backend_import():
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "bitsandbytes.backends.cpu.ops":
            return frame.f_code.co_name == "<module>"
        frame = frame.f_back
    return False


class SimulatedAvx512Bf16(importlib.abc.MetaPathFinder):
    """bitsandbytes' native check says yes, but only to the CPU backend's import."""

    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.cextension":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.lib.has_avx512bf16_cpu
            module.lib.has_avx512bf16_cpu = lambda: asked_by_the_cpu_backend_import() or real()

        spec.loader.exec_module = exec_module
        return spec


if SIMULATED:
    sys.meta_path.insert(0, SimulatedAvx512Bf16())


def report():
    cpu_ops = sys.modules["bitsandbytes.backends.cpu.ops"]
    calls["fetching_branch_ran"] = hasattr(cpu_ops, "gemm_4bit_forward_kernel")
    calls["hub_kernel_loaded"] = getattr(cpu_ops, "gemm_4bit_forward_kernel", None) is not None
    print("CALLS " + json.dumps(calls))
'''

THROUGH_THE_CLI = r"""
from alignment.cli import main

main(sys.argv[1:])
report()
"""

PEFT_FIRST = r"""
import peft  # as a stage module does at its top, before anything from alignment

import alignment.models
report()
"""


def run_recorded(scenario: str, *args: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # as if online
    done = subprocess.run(
        [sys.executable, "-c", RECORDER + scenario, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("CALLS ")]
    return json.loads(line.removeprefix("CALLS ")), done.stderr


def test_qlora_training_fetches_nothing_and_warns_of_nothing(tiny_recipe: Path, tmp_path: Path):
    calls, stderr = run_recorded(
        THROUGH_THE_CLI,
        "sft",
        str(tiny_recipe),
        "model.quantization=4bit",
        "sft.max_steps=1",
        "sft.eval_fraction=0",
    )
    assert (tmp_path / "run" / "sft" / "adapter_model.safetensors").is_file()  # it did train
    assert calls["fetching_branch_ran"]  # bitsandbytes reached its get_kernel call...
    assert calls["get_kernel"] == [] and not calls["hub_kernel_loaded"]  # ...and did not make it
    assert calls["lookups"] == [] and calls["connects"] == []
    assert "kernels" not in stderr  # no warning about the kernel it was not allowed to fetch


def test_the_recorder_sees_the_fetch_when_peft_is_imported_first():
    """The control: imported before alignment.models, bitsandbytes does ask for the Hub kernel
    (so the stage modules, which import peft first, rely on `align` importing models first)."""
    calls, stderr = run_recorded(PEFT_FIRST)
    assert calls["fetching_branch_ran"]
    assert calls["get_kernel"] == ["kernels-community/quantization-bitsandbytes"]
    assert "kernels-community" in stderr  # and warns about it
