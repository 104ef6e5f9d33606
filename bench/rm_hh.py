"""Reward model on real human preferences: `align rm` against TRL's `trl reward`, in one run.

    python bench/rm_hh.py [--steps N] [--batch-size B] [--max-length L] [--lr X] [--dtype D]

Both train SmolLM2-135M-Instruct (the embedded model, converted once; both read the same
directory) with QLoRA: a 4-bit NF4 base (double quant), LoRA of the same rank on all linear
layers and a trained score head, for the same steps, batch size (pairs per step), max length,
learning rate and schedule, on data/hh-rlhf-harmless/train.jsonl. `align rm` runs
recipes/hh-harmless.yaml; `trl reward` gets the same pairs, converted by the same reader to TRL's
conversational preference format (explicit prompt), in a temporary directory. Both adapters are
then scored by the same code, `align eval rm`, on test.jsonl.

`--pairs fitting` (default) gives both sides only the pairs whose longer conversation fits in
max_length, so both train on the same examples: `trl reward` drops longer pairs, `align rm` would
keep them and cut their start, which makes its steps longer. `--pairs all` compares the two as
users would run them on the whole file. Both sides run at the same time with `--threads` torch
threads each, so the load of a shared machine falls on both alike.

Reported per side: pairwise accuracy and mean margin on test.jsonl, training time (the Trainer's
train_runtime) and the training process's wall time and peak RSS (its own rusage, os.wait4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from common import ROOT, Measured, machine, run_measured, threads_env, tool, trainer_logs

from alignment.config import ModelConfig
from alignment.dpo import preference_rows
from alignment.models import load_tokenizer, resolve_model
from alignment.preferences import read_preferences
from alignment.tokens import conversation_ids

DATA = ROOT / "data" / "hh-rlhf-harmless"


def trl_rows(source: Path) -> list[dict]:
    """The HH pairs as TRL conversational preference rows, read by the same code as ours."""
    return preference_rows(read_preferences(str(source)).comparisons)


def train_seconds(run: Measured) -> float:
    return next(r["train_runtime"] for r in trainer_logs(run.output) if "train_runtime" in r)


def evaluate(label: str, adapter: Path, work: Path, max_length: int, threads: int) -> dict:
    out = work / f"{label}-eval.json"
    run_measured(
        f"{label}-eval",
        [
            tool("align"), "eval", "rm", str(adapter), "--data", str(DATA / "test.jsonl"),
            "--quantization", "4bit", "--max-length", str(max_length), "--out", str(out),
        ],
        env=threads_env(threads),
    )  # fmt: skip
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)  # as recipes/hh-harmless.yaml
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--pairs", choices=["fitting", "all"], default="fitting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    parser.add_argument("--only", choices=["align", "trl"], help="run one side (for tuning)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="more recipe keys for the align side"
    )
    args = parser.parse_args()

    model_dir = resolve_model(ModelConfig())
    work = Path(tempfile.mkdtemp(prefix="bench-rm-"))
    rows = trl_rows(DATA / "train.jsonl")
    tokenizer = load_tokenizer(ModelConfig(), model_dir)
    fitting = [
        row
        for row in rows
        if max(
            len(conversation_ids(tokenizer, [*row["prompt"], *row[side]]))
            for side in ("chosen", "rejected")
        )
        <= args.max_length
    ]
    fits = len(fitting)
    if args.pairs == "fitting":
        rows = fitting
    (work / "data").mkdir()
    train_file = work / "data" / "train.jsonl"
    with train_file.open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)

    shared = {"steps": args.steps, "bs": args.batch_size, "len": args.max_length, "lr": args.lr}
    align = [
        tool("align"), "rm", str(ROOT / "recipes" / "hh-harmless.yaml"), f"run_dir={work / 'align'}",
        f"rm.data={train_file}", "rm.format=trl",
        f"rm.max_steps={args.steps}", f"rm.batch_size={args.batch_size}",
        f"rm.max_length={args.max_length}", f"rm.learning_rate={args.lr}",
        "rm.lr_scheduler=linear", "rm.warmup_ratio=0.03", "rm.eval_data=null",
        "rm.eval_fraction=0", f"rm.save_steps={args.steps * 10}", f"lora.r={args.r}",
        f"lora.alpha={2 * args.r}", f"model.dtype={args.dtype}", *args.overrides,
    ]  # fmt: skip
    trl = [
        tool("trl"), "reward", "--model_name_or_path", model_dir, "--dataset_name", str(work / "data"),
        "--output_dir", str(work / "trl"), "--use_peft", "--lora_task_type", "SEQ_CLS",
        "--lora_r", str(args.r), "--lora_alpha", str(2 * args.r), "--lora_dropout", "0.05",
        "--lora_target_modules", "all-linear", "--load_in_4bit", "--bnb_4bit_quant_type", "nf4",
        "--use_bnb_nested_quant", "--dtype", args.dtype, "--max_length", str(args.max_length),
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.lr), "--lr_scheduler_type", "linear", "--warmup_steps", "0.03",
        "--logging_steps", "10", "--save_strategy", "no", "--eval_strategy", "no",
        "--report_to", "none", "--seed", "42", "--bf16", "False",
    ]  # fmt: skip

    sides = [("trl", trl, work / "trl"), ("align", align, work / "align" / "rm")]
    sides = [side for side in sides if not args.only or side[0] == args.only]
    load = os.getloadavg()[0]

    def run_side(label: str, command: list[str], adapter: Path) -> tuple[Measured, dict]:
        run = run_measured(f"rm-{label}", command, env=threads_env(args.threads))
        report = evaluate(label, adapter, work, args.max_length, args.threads)
        print(
            f"{label}: accuracy {report['accuracy']:.3f} (preferred longer "
            f"{report['preferred_longer_accuracy']:.3f}), train {train_seconds(run):.0f} s, "
            f"wall {run.wall_seconds:.0f} s, peak RSS {run.peak_rss_mib:.0f} MiB",
            flush=True,
        )
        return run, report

    with ThreadPoolExecutor(len(sides)) as pool:
        futures = {label: pool.submit(run_side, label, *rest) for label, *rest in sides}
        results = {label: future.result() for label, future in futures.items()}

    print(f"\n### {date.today()}, {machine()}")
    print(
        f"SmolLM2-135M-Instruct, 4-bit NF4 + LoRA r={args.r} all-linear + score head, "
        f"{args.dtype} compute, {shared['steps']} steps x {shared['bs']} pairs, max_length "
        f"{shared['len']}, lr {shared['lr']}, {args.threads} torch thread(s) per side, both at once, load "
        f"average {load:.1f} at the start. Train: {len(rows)} pairs (--pairs {args.pairs}; {fits} fit in max_length, TRL drops the "
        f"rest). Test: {results[next(iter(results))][1]['pairs']} pairs.\n"
    )
    print(
        "| run | test accuracy [95% CI] | preferred longer | mean margin | train s | "
        "process wall s | peak RSS MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, (run, report) in results.items():
        interval = report["accuracy_interval"]
        print(
            f"| {label} | {report['accuracy']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}] "
            f"| {report['preferred_longer_accuracy']:.3f} | {report['mean_margin']:.3f} | "
            f"{train_seconds(run):.0f} | {run.wall_seconds:.0f} | {run.peak_rss_mib:.0f} |"
        )
    if len(results) == 2:
        (ours, our_report), (theirs, their_report) = results["align"], results["trl"]
        print(
            f"\nalign / trl: accuracy {our_report['accuracy'] - their_report['accuracy']:+.3f}, "
            f"train time {train_seconds(ours) / train_seconds(theirs):.2f}x, "
            f"wall {ours.wall_seconds / theirs.wall_seconds:.2f}x, "
            f"peak RSS {ours.peak_rss_mib / theirs.peak_rss_mib:.2f}x"
        )
        print("\nAccuracy by length (test), align | trl:")
        for mine, other in zip(
            our_report["by_length"] + our_report["by_answer_length"],
            their_report["by_length"] + their_report["by_answer_length"],
            strict=True,
        ):
            print(
                f"- {mine['bucket']}: {mine['accuracy']:.3f} | {other['accuracy']:.3f} "
                f"({mine['pairs']} pairs)"
            )
    some_report = next(iter(results.values()))[1]
    print(
        f"\nLength baseline, the rule 'the shorter answer wins': {some_report['shorter_wins_accuracy']:.3f}"
    )
    print(f"\nwork directory: {work}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
