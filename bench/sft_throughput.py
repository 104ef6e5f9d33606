"""SFT throughput and memory: `align sft` against TRL's own `trl sft`, side by side in one run.

    python bench/sft_throughput.py [--examples 64] [--quantization 4bit|none] [--threads 1]

Each run trains SmolLM2-135M-Instruct (the embedded model, converted once) for exactly one epoch
over the same demonstrations (a fixed random sample of data/demos.jsonl), with the same LoRA,
quantization, batch size, max length and learning rate. One epoch matters: peak memory follows the
longest padded batch and tokens/s the lengths trained, so runs over a few steps in different orders
(length-grouped vs random) would measure different examples. Throughput is non-padding tokens
trained per second of training time (model loading excluded); memory is each process's own peak RSS.
`align-unsorted` turns off length-grouped batching to show its share. A probe loaded into every
child prints the settings each run really trains with; the script reports any that differ and
refuses to compare runs that trained on different tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from datetime import date
from pathlib import Path

from common import (
    ROOT,
    Measured,
    machine,
    probe_env,
    probe_reports,
    run_measured,
    tool,
    trainer_logs,
)

from alignment.config import ModelConfig
from alignment.data import sft_examples
from alignment.models import resolve_model


def throughput(run: Measured) -> tuple[float, float]:
    logs = trainer_logs(run.output)
    tokens = max(r["num_tokens"] for r in logs if "num_tokens" in r)
    seconds = next(r["train_runtime"] for r in logs if "train_runtime" in r)
    return tokens / seconds, seconds


def report_differences(runs: list[Measured]) -> None:
    """Print every setting on which the runs differ, and stop if they trained on different tokens."""
    reports = [probe_reports(run.output) for run in runs]
    keys = [k for k in reports[0][0] if k != "hwm_mib"]
    for key in keys:
        values = [json.dumps(start.get(key), sort_keys=True) for start, _ in reports]
        if len(set(values)) > 1:
            shown = ", ".join(f"{run.label}={v}" for run, v in zip(runs, values, strict=True))
            print(f"settings differ: {key}: {shown}")
    labels = {end["label_tokens"] for _, end in reports}
    if len(labels) > 1:
        sys.exit(f"runs trained on different label tokens: {labels}")
    for run, (start, end) in zip(runs, reports, strict=True):
        print(
            f"{run.label}: {end['steps']} steps, {end['label_tokens']} label tokens, longest batch "
            f"{end['longest']}, RSS high-water {start['hwm_mib']} MiB at train start (model load), "
            f"{end['hwm_mib']} MiB at end"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples", type=int, default=64, help="demonstrations in the one-epoch run"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--quantization", choices=["4bit", "none"], default="4bit")
    # One thread per run by default: on a shared 2-core machine, OpenMP teams of 2 stall on each
    # other whenever another job takes a core (steps measured 3-5x slower and erratic).
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every run")
    args = parser.parse_args()

    model_dir = resolve_model(ModelConfig())
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    (work / "data").mkdir()
    # Sample whole conversations, not examples: `align` splits a conversation into one example per
    # assistant turn itself, so it reads the conversations while `trl sft` reads the examples they
    # give, and both train the same examples.
    conversations = (ROOT / "data" / "demos.jsonl").read_text().splitlines()
    random.Random(0).shuffle(conversations)
    data, rows = work / "conversations.jsonl", []
    with data.open("w") as f:
        for line in filter(str.strip, conversations):
            if len(rows) >= args.examples:
                break
            f.write(line + "\n")
            f.flush()
            rows = sft_examples(str(data))
    with (work / "data" / "train.jsonl").open("w") as f:
        for row in sft_examples(str(data)):
            f.write(json.dumps(row) + "\n")
    env = probe_env(work)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    common = {"lr": 3e-4, "r": 16, "alpha": 32}
    align = [
        tool("align"), "sft", str(ROOT / "recipes" / "quickstart.yaml"), f"sft.data={data}",
        f"model.quantization={args.quantization}", "sft.epochs=1", "sft.max_steps=-1",
        f"sft.batch_size={args.batch_size}", f"sft.max_length={args.max_length}",
        f"sft.learning_rate={common['lr']}", "sft.eval_fraction=0", "sft.logging_steps=5",
        "sft.save_steps=100000", "sft.warmup_ratio=0", "sft.lr_scheduler=linear",
        f"lora.r={common['r']}", f"lora.alpha={common['alpha']}",
    ]  # fmt: skip
    trl = [
        tool("trl"), "sft", "--model_name_or_path", model_dir, "--dataset_name", str(work / "data"),
        "--output_dir", str(work / "trl"), "--use_peft", "--lora_r", str(common["r"]),
        "--lora_alpha", str(common["alpha"]), "--lora_dropout", "0.05",
        "--lora_target_modules", "all-linear", "--num_train_epochs", "1",
        "--per_device_train_batch_size", str(args.batch_size), "--max_length", str(args.max_length),
        "--learning_rate", str(common["lr"]), "--lr_scheduler_type", "linear", "--logging_steps", "5",
        "--save_strategy", "no", "--report_to", "none", "--bf16", "False", "--dtype", "float32",
        "--gradient_checkpointing", "False", "--seed", "42", "--disable_tqdm", "False",
    ]  # fmt: skip
    if args.quantization == "4bit":
        trl += ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant"]

    runs = [
        run_measured("trl-sft", trl, env),
        run_measured("align-sft", [*align, f"run_dir={work / 'align'}"], env),
        run_measured(
            "align-sft-unsorted",
            [*align, f"run_dir={work / 'align-unsorted'}", "sft.group_by_length=false"],
            env,
        ),
    ]
    threads = args.threads or os.environ.get("OMP_NUM_THREADS") or "all"
    print(f"# SFT benchmark, {date.today()}, {machine()}, threads per run: {threads}")
    print(
        f"SmolLM2-135M-Instruct, {args.quantization}, LoRA r=16 all-linear, batch {args.batch_size}, "
        f"max_length {args.max_length}, one epoch of {len(rows)} demonstrations"
    )
    report_differences(runs)
    baseline_tps, _ = throughput(runs[0])
    baseline_rss = runs[0].peak_rss_mib
    print("| run | tokens/s | train s | train loss | peak RSS MiB | tokens/s vs TRL | RSS vs TRL |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        tps, seconds = throughput(run)
        loss = next(r["train_loss"] for r in trainer_logs(run.output) if "train_loss" in r)
        print(
            f"| {run.label} | {tps:.0f} | {seconds:.1f} | {loss:.3f} | {run.peak_rss_mib:.0f} | "
            f"{tps / baseline_tps:.2f}x | {run.peak_rss_mib / baseline_rss:.2f}x |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
