"""The Trainer-based stages (sft, rm, dpo) under `accelerate launch` with two CPU processes
(gloo), and the shipped accelerate configs as accelerate itself reads them."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

from alignment.config import load_recipe
from alignment.runs import read_jsonl
from alignment.sft import run_sft
from tests.conftest import ROOT, demo_rows, preference_rows, write_jsonl

CONFIGS = ROOT / "recipes" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ddp.yaml", DistributedType.MULTI_GPU),
        ("fsdp.yaml", DistributedType.FSDP),
        ("deepspeed-zero3.yaml", DistributedType.DEEPSPEED),
    ],
)
def test_accelerate_configs_load_with_accelerates_own_loader(name, kind):
    config = load_config_from_file(str(CONFIGS / name))  # refuses unknown top-level keys
    assert config.distributed_type == kind
    assert config.num_machines == 1 and config.num_processes >= 2
    # Nested keys become `accelerate launch` options; a misspelt one would be silently ignored.
    options = {action.dest for action in launch_command_parser()._actions}
    nested = {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}
    assert sorted(set(nested) - options) == []
    header = (CONFIGS / name).read_text().split("\ncompute_environment")[0]
    assert f"accelerate launch --config_file recipes/accelerate/{name} -m alignment.cli" in header


@pytest.fixture(scope="module")
def tiny_distributed_recipe(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    demos = write_jsonl(root / "demos.jsonl", demo_rows(16))
    pairs = write_jsonl(
        root / "pairs.jsonl",
        [
            {**row, "ranking_id": i, "annotator": "alice"}
            for i, row in enumerate(preference_rows(16))
        ],
    )
    recipe = root / "tiny.yaml"
    recipe.write_text(
        f"""name: tiny-distributed
model: {{name: {tiny_model_dir}}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 3, batch_size: 2, max_length: 64, logging_steps: 1,
       eval_fraction: 0, save_steps: 10}}
rm: {{data: {pairs}, init: base, max_steps: 3, batch_size: 2, max_length: 64, logging_steps: 1,
      eval_fraction: 0, save_steps: 10, stats_examples: 4}}
dpo: {{data: {pairs}, sft_adapter: {root / "shared" / "sft"}, max_steps: 3, batch_size: 2,
       max_length: 64, logging_steps: 1, eval_fraction: 0, save_steps: 10}}
"""
    )
    run_sft(load_recipe(recipe, [f"run_dir={root / 'shared'}"]))  # the adapter DPO starts from
    return recipe


def launch(stage: str, recipe: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Two CPU processes over gloo with the shipped DDP config.

    Not `accelerate launch --cpu --num_processes 2`: accelerate 1.x starts a single process for
    that (it runs several CPU processes only through mpirun). With the DDP config and
    ACCELERATE_USE_CPU, it starts two processes through torch.distributed, and they pick gloo.
    """
    return subprocess.run(
        [
            "accelerate",
            "launch",
            "--config_file",
            str(CONFIGS / "ddp.yaml"),
            "--num_processes",
            "2",
            "-m",
            "alignment.cli",
            stage,
            str(recipe),
            f"run_dir={run_dir}",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "ACCELERATE_USE_CPU": "true"},
    )


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_stage_completes_under_accelerate_with_two_cpu_processes(
    stage, tiny_distributed_recipe, tmp_path
):
    done = launch(stage, tiny_distributed_recipe, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / stage
    assert (out / "adapter_config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    # Only the main process logs: one record per step, not one per process.
    logged = [h for h in read_jsonl(out / "metrics.jsonl") if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    # Two processes of batch 2 go through the 16 rows in 4 steps (one process would need 8).
    assert logged[-1]["epoch"] == pytest.approx(0.75)
