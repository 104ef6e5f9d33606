"""Trainer stages survive a crash: SIGKILL mid-run, mid-save and after the last checkpoint, then
`--resume`, gives the uninterrupted run's adapter bit for bit, its metrics and its summary; a
diverging run stops with its last good checkpoint; Ctrl-C saves and says how to resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from alignment.config import load_recipe
from alignment.dpo import run_dpo
from alignment.errors import TrainingDiverged
from alignment.guarded_trainer import STATE_FILE, StageInterrupted
from alignment.rm import run_rm
from alignment.runs import read_jsonl
from alignment.sft import run_sft
from tests.conftest import ROOT, demo_rows, write_jsonl
from tests.kill_points import added_callback

RUNNERS = {"sft": run_sft, "rm": run_rm, "dpo": run_dpo}
STEPS, SAVE_EVERY = 8, 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Question {i}"}],
            "chosen": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
            "rejected": [{"role": "assistant", "content": "The quick brown fox." + " x" * (i % 4)}],
        }
        for i in range(24)
    ]
    files = {
        "root": root,
        "model": tiny_model_dir,
        "demos": write_jsonl(root / "demos.jsonl", demo_rows(24)),
        "pairs": write_jsonl(root / "pairs.jsonl", pairs),
    }
    # DPO starts from an SFT adapter: one, copied into every DPO run directory.
    run_sft(load_recipe(write_recipe(files, root / "sft-source", "float32")))
    return files


def write_recipe(inputs: dict[str, Path], run: Path, dtype: str, **extra: str) -> Path:
    stage = f"{{max_steps: {STEPS}, batch_size: 4, max_length: 64, logging_steps: 1, save_steps: {SAVE_EVERY}, eval_steps: 4, eval_fraction: 0.2"
    path = run.parent / f"{run.name}.yaml"
    path.write_text(
        f"""name: {run.name}
run_dir: {run}
model: {{name: {inputs["model"]}, dtype: {dtype}}}
lora: {{r: 4, alpha: 8}}
sft: {stage}, data: {inputs["demos"]}{extra.get("sft", "")}}}
rm: {stage}, data: {inputs["pairs"]}, init: base{extra.get("rm", "")}}}
dpo: {stage}, data: {inputs["pairs"]}{extra.get("dpo", "")}}}
"""
    )
    return path


def prepared_run(inputs: dict[str, Path], name: str, stage: str, dtype: str, **extra: str) -> Path:
    run = inputs["root"] / name
    if stage == "dpo":
        shutil.copytree(inputs["root"] / "sft-source" / "sft", run / "sft")
    return write_recipe(inputs, run, dtype, **extra)


def timeless(row: dict) -> dict:
    """A metrics row or summary without its wall-clock figures, which no two runs share."""
    return {
        k: v
        for k, v in row.items()
        if k != "time" and not k.endswith(("_runtime", "_per_second", "_seconds", "_time"))
    }


def outputs(run_dir: Path) -> tuple[dict, dict, list]:
    weights = load_file(run_dir / "adapter_model.safetensors")
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [timeless(row) for row in read_jsonl(run_dir / "metrics.jsonl")]
    return weights, timeless(summary), metrics


_reference_runs: dict[tuple[str, str], Path] = {}


def reference(inputs: dict[str, Path], stage: str, dtype: str) -> Path:
    key = (stage, dtype)
    if key not in _reference_runs:
        recipe = load_recipe(prepared_run(inputs, f"ref-{stage}-{dtype}", stage, dtype))
        _reference_runs[key] = RUNNERS[stage](recipe).out_dir
    return _reference_runs[key]


# Every stage meets every kill point and both dtypes, and every kill point both dtypes (pairwise,
# not the full 18-run grid: the mechanism is one, GuardedTrainer, and each run costs a process).
@pytest.mark.parametrize(
    ("stage", "point", "step", "dtype"),
    [
        ("sft", "mid-run", 5, "float32"),
        ("sft", "mid-save", 6, "bfloat16"),
        ("sft", "after-last", STEPS, "bfloat16"),
        ("rm", "mid-run", 5, "bfloat16"),
        ("rm", "mid-save", 6, "float32"),
        ("rm", "after-last", STEPS, "bfloat16"),
        ("dpo", "mid-run", 5, "bfloat16"),
        ("dpo", "mid-save", 6, "bfloat16"),
        ("dpo", "after-last", STEPS, "float32"),
    ],
)
def test_kill_then_resume_reproduces_the_uninterrupted_run(inputs, stage, dtype, point, step):
    recipe_path = prepared_run(inputs, f"{stage}-{dtype}-{point}", stage, dtype)
    killed = subprocess.run(
        [sys.executable, "-m", "tests.kill_points", point, str(step), stage, str(recipe_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = recipe_path.parent / recipe_path.stem / stage / "checkpoints"
    if point == "mid-save":  # the checkpoint being written is there, but not complete
        assert not (checkpoints / f"checkpoint-{step}" / STATE_FILE).exists()

    outcome = RUNNERS[stage](load_recipe(recipe_path), resume=True)

    if point == "mid-save":
        assert any(
            p.name.startswith(f"incomplete-checkpoint-{step}-") for p in checkpoints.iterdir()
        )
    weights, summary, metrics = outputs(outcome.out_dir)
    ref_weights, ref_summary, ref_metrics = outputs(reference(inputs, stage, dtype))
    assert weights.keys() == ref_weights.keys()
    for name, tensor in ref_weights.items():
        assert weights[name].dtype == tensor.dtype, name
        assert torch.equal(weights[name], tensor), name
    assert summary == ref_summary
    assert metrics == ref_metrics


class AtStep(transformers.TrainerCallback):
    """Calls `action(kwargs)` as optimizer step `step` + 1 begins."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.action(kwargs)


def blow_up_learning_rate(kwargs: dict) -> None:
    kwargs["lr_scheduler"].base_lrs = [1e38] * len(kwargs["optimizer"].param_groups)
    for group in kwargs["optimizer"].param_groups:
        group["lr"] = 1e38


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_writes_no_adapter(inputs):
    recipe = load_recipe(prepared_run(inputs, "diverging", "sft", "float32"))
    recipe = recipe.model_copy(
        update={"sft": recipe.sft.model_copy(update={"lr_scheduler": "constant"})}
    )
    with (
        added_callback(AtStep(4, blow_up_learning_rate)),
        pytest.raises(
            TrainingDiverged, match=r"training diverged at step [56]: .*(nan|not finite)"
        ),
    ):
        run_sft(recipe)
    out = recipe.output_dir / "sft"
    assert not (out / "adapter_model.safetensors").exists()
    assert not (out / "summary.json").exists()
    kept = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-4"]  # none from the diverged steps
    for checkpoint in kept:
        for tensor in load_file(
            out / "checkpoints" / checkpoint / "adapter_model.safetensors"
        ).values():
            assert torch.isfinite(tensor).all(), checkpoint


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint_then_resumes_exactly(inputs):
    recipe = load_recipe(prepared_run(inputs, "interrupted", "sft", "float32"))
    # SIGINT to this process, as a terminal's Ctrl-C, as step 4 begins.
    ctrl_c = AtStep(3, lambda kwargs: os.kill(os.getpid(), signal.SIGINT))
    with (
        added_callback(ctrl_c),
        pytest.raises(
            StageInterrupted, match=r"^interrupted: stopped after step 4 and saved checkpoint-4$"
        ),
    ):
        run_sft(recipe)
    out = recipe.output_dir / "sft"
    assert (out / "checkpoints" / "checkpoint-4" / STATE_FILE).is_file()
    assert not (out / "adapter_model.safetensors").exists()
    outcome = run_sft(recipe, resume=True)
    weights, summary, metrics = outputs(outcome.out_dir)
    ref_weights, ref_summary, ref_metrics = outputs(reference(inputs, "sft", "float32"))
    assert all(torch.equal(weights[k], v) for k, v in ref_weights.items())
    assert (summary, metrics) == (ref_summary, ref_metrics)
