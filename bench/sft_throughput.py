"""SFT throughput and memory: `align sft` against TRL's own `trl sft`, side by side in one run.

    python bench/sft_throughput.py [--steps 30] [--quantization 4bit|none]

Both train SmolLM2-135M-Instruct (the embedded model, converted once) with the same LoRA,
quantization, batch size, max length, learning rate, steps and demonstrations. Throughput is
non-padding tokens trained per second of training time (model loading excluded); memory is each
process's own peak RSS. `align-unsorted` turns off length-grouped batching to show its share.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import date
from pathlib import Path

from common import ROOT, Measured, machine, run_measured, trainer_logs

from alignment.config import ModelConfig
from alignment.data import sft_examples
from alignment.models import resolve_model


def throughput(run: Measured) -> tuple[float, float]:
    logs = trainer_logs(run.output)
    tokens = max(r["num_tokens"] for r in logs if "num_tokens" in r)
    seconds = next(r["train_runtime"] for r in logs if "train_runtime" in r)
    return tokens / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--quantization", choices=["4bit", "none"], default="4bit")
    args = parser.parse_args()

    model_dir = resolve_model(ModelConfig())
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    (work / "data").mkdir()
    with (work / "data" / "train.jsonl").open("w") as f:
        for row in sft_examples(str(ROOT / "data" / "demos.jsonl")):
            f.write(json.dumps(row) + "\n")

    common = {"steps": args.steps, "lr": 3e-4, "r": 16, "alpha": 32}
    align = [
        "align", "sft", str(ROOT / "recipes" / "quickstart.yaml"),
        f"model.quantization={args.quantization}", f"sft.max_steps={args.steps}",
        f"sft.batch_size={args.batch_size}", f"sft.max_length={args.max_length}",
        f"sft.learning_rate={common['lr']}", "sft.eval_fraction=0", "sft.logging_steps=5",
        f"sft.save_steps={args.steps * 10}", "sft.warmup_ratio=0", "sft.lr_scheduler=linear",
        f"lora.r={common['r']}", f"lora.alpha={common['alpha']}",
    ]  # fmt: skip
    trl = [
        "trl", "sft", "--model_name_or_path", model_dir, "--dataset_name", str(work / "data"),
        "--output_dir", str(work / "trl"), "--use_peft", "--lora_r", str(common["r"]),
        "--lora_alpha", str(common["alpha"]), "--lora_dropout", "0.05",
        "--lora_target_modules", "all-linear", "--max_steps", str(args.steps),
        "--per_device_train_batch_size", str(args.batch_size), "--max_length", str(args.max_length),
        "--learning_rate", str(common["lr"]), "--lr_scheduler_type", "linear", "--logging_steps", "5",
        "--save_strategy", "no", "--report_to", "none", "--bf16", "False", "--dtype", "float32",
        "--gradient_checkpointing", "False", "--seed", "42", "--disable_tqdm", "False",
    ]  # fmt: skip
    if args.quantization == "4bit":
        trl += ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant"]

    runs = [
        run_measured("trl-sft", trl),
        run_measured("align-sft", [*align, f"run_dir={work / 'align'}"]),
        run_measured(
            "align-sft-unsorted",
            [*align, f"run_dir={work / 'align-unsorted'}", "sft.group_by_length=false"],
        ),
    ]
    baseline_tps, _ = throughput(runs[0])
    baseline_rss = runs[0].peak_rss_mib
    print(f"# SFT benchmark, {date.today()}, {machine()}")
    print(
        f"SmolLM2-135M-Instruct, {args.quantization}, LoRA r=16 all-linear, batch {args.batch_size}, max_length {args.max_length}, {args.steps} steps"
    )
    print("| run | tokens/s | train s | peak RSS MiB | tokens/s vs TRL | RSS vs TRL |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in runs:
        tps, seconds = throughput(run)
        print(
            f"| {run.label} | {tps:.0f} | {seconds:.1f} | {run.peak_rss_mib:.0f} | "
            f"{tps / baseline_tps:.2f}x | {run.peak_rss_mib / baseline_rss:.2f}x |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
