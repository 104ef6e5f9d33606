"""Tracking and logs of a short QLoRA run through the CLI: every stage's metrics reach TensorBoard
under metrics.jsonl's names, each stage's train.log holds that stage alone, and nothing warns
that a user cannot act on."""

import re
import subprocess
import sys

import pytest
from accelerate.utils import is_wandb_available
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alignment.config import load_recipe
from alignment.errors import RecipeError
from alignment.runs import end_stage, read_jsonl, record_metrics, start_stage
from tests.conftest import ROOT, demo_rows, preference_rows, write_jsonl

# What the libraries print when they warn: a logging record or a `warnings.warn` line.
WARNING = re.compile(r"\bWARNING\b|\w+Warning:")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir):
    """`align rm`, then `align run` over sft and ppo (with that reward model): three stages,
    4-bit like the quickstart; returns the run directory and both commands' stderr."""
    root = tmp_path_factory.mktemp("tracked")
    demos = write_jsonl(root / "demos.jsonl", demo_rows(16))
    pairs = write_jsonl(root / "pairs.jsonl", preference_rows(12))
    run = root / "run"
    recipe = root / "tracked.yaml"
    recipe.write_text(
        f"""name: tracked
run_dir: {run}
model: {{name: {tiny_model_dir}, quantization: 4bit}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 2, batch_size: 4, max_length: 64, logging_steps: 1,
       eval_fraction: 0.25, eval_steps: 2}}
rm: {{data: {pairs}, init: base, max_steps: 2, batch_size: 4, max_length: 64, logging_steps: 1,
      eval_fraction: 0.25, stats_examples: 4}}
ppo: {{prompts: {ROOT / "data" / "prompts.jsonl"}, reward_adapter: {run / "rm"}, updates: 2,
       rollout_batch_size: 4, minibatch_size: 2, max_new_tokens: 6}}
chain: {{stages: [sft, ppo]}}
"""
    )
    stderr = []
    for command in (["rm"], ["run"]):
        done = subprocess.run(
            [sys.executable, "-m", "alignment.cli", *command, str(recipe)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        stderr.append(done.stderr)
    return run, "\n".join(stderr)


def scalar_tags(stage_dir):
    """TensorBoard's scalar tags in <stage>/tensorboard, with their steps."""
    events = EventAccumulator(str(stage_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize(
    ("stage", "step_key"), [("sft", "step"), ("rm", "step"), ("ppo", "update")]
)
def test_every_stage_logs_metrics_jsonl_figures_to_tensorboard_under_the_same_names(
    tracked_run, stage, step_key
):
    run, _ = tracked_run
    rows = read_jsonl(run / stage / "metrics.jsonl")
    expected: dict[str, list[int]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in (step_key, "time") and isinstance(value, (int, float)):
                expected.setdefault(key, []).append(row[step_key])
    assert expected, f"{stage} logged no metrics"
    assert scalar_tags(run / stage) == expected


def test_each_stage_log_holds_that_stage_alone(tracked_run):
    run, _ = tracked_run
    logs = {stage: (run / stage / "train.log").read_text() for stage in ("sft", "rm", "ppo")}
    assert "alignment.sft" in logs["sft"] and "alignment.rm" in logs["rm"]
    assert "alignment.ppo" not in logs["sft"] and "stage ppo" not in logs["sft"]
    assert "alignment.sft" not in logs["ppo"] and "alignment.rm" not in logs["ppo"]


def test_a_short_chain_warns_of_nothing_a_user_cannot_act_on(tracked_run):
    run, stderr = tracked_run
    lines = stderr.splitlines()
    for stage in ("sft", "rm", "ppo"):
        lines += (run / stage / "train.log").read_text().splitlines()
    # Our own warnings name the file, line or key at fault; the libraries' are noise here.
    foreign = [line for line in lines if WARNING.search(line) and "alignment." not in line]
    assert foreign == []
    assert "Loading weights" not in stderr  # the base is loaded from a local directory
    assert "reward statistics" in stderr and "scoring comparisons" in stderr  # the RM's bars


def test_a_tracker_that_is_not_installed_is_named_before_the_stage_starts(tiny_recipe):
    if is_wandb_available():
        pytest.skip("wandb is installed here")
    recipe = load_recipe(tiny_recipe, ["report_to=[tensorboard, wandb]"])
    with pytest.raises(
        RecipeError, match=r"report_to: wandb not installed; pip install 'alignment\[wandb\]'"
    ):
        start_stage(recipe, "sft")
    assert not (recipe.output_dir / "sft").exists()


def test_an_empty_report_to_writes_metrics_jsonl_only(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["report_to=[]"])
    out = start_stage(recipe, "sft")
    record_metrics(out / "metrics.jsonl", "step", 1, {"loss": 1.5})
    end_stage()
    assert read_jsonl(out / "metrics.jsonl")[0]["loss"] == 1.5
    assert not (out / "tensorboard").exists()
