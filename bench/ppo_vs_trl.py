"""PPO memory, speed and reward gain: `align ppo` against TRL 1.12.0's PPOTrainer, side by side.

    python bench/ppo_vs_trl.py [--seeds 42 1 2] [--updates 8] [--batch-size 8] [--max-new-tokens 32]

SmolLM2-135M-Instruct (the embedded model), unquantized and in one dtype on both sides (`--dtype`,
default what `model.dtype: auto` picks on this machine), the same prompts per update,
rollout batch, minibatch, PPO epochs, answer length, learning rate, KL coefficient, unfinished-
answer penalty and normalised reward. Ours holds policy, reference, reward and value as four
LoRA adapters on one base model; TRL (its last PPO, `trl.experimental.ppo` in 1.12.0, installed
once into a folder of its own) holds a LoRA policy, a full reward model and a full value model trained
in full, and uses the policy with its adapter disabled as reference.

Prepared once and cached (under $ALIGNMENT_CACHE_DIR or ~/.cache/alignment): the SFT and reward
adapters (`align run recipes/quickstart.yaml --until rm`, shortened, unquantized), the reward adapter
merged into a full AutoModelForSequenceClassification for TRL, and TRL 1.12.0 in a folder of its
own. `--dry-run` checks the environment and prints what a run would prepare and run, in seconds.

Both sides run at the same time, one torch thread each (`--threads`), so the load of a shared
CPU falls on both alike. Figures: peak RSS of each child process (wait4); seconds per update
from each side's own logs (model loading excluded); reward gain = mean reward-model score of the
final policy's greedy answers to held-out prompts minus that of the SFT policy (same reward
model, same scoring code). One pair of runs per seed (default three: one seed's gain swings by
0.2 either way); memory is the peak over seeds, the other figures their mean.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from statistics import mean
from typing import Any

from common import ROOT, Measured, machine, run_measured, threads_env, tool

from alignment.config import ModelConfig
from alignment.data import read_prompts
from alignment.generation import GenerationSettings, generate
from alignment.models import cache_root, compute_dtype, load_tokenizer, resolve_model
from alignment.rlhf.rollout import prompt_indices
from alignment.tokens import encode_prompt

TRL_VERSION = "1.12.0"
RECIPE = ROOT / "recipes" / "quickstart.yaml"
# Prep of the SFT and reward adapters: a few minutes on 2 cores, not a good model. Unquantized, so
# the adapters fit the plain base both sides run on.
PREP_OVERRIDES = [
    "model.quantization=none",
    "sft.max_steps=8",
    "sft.batch_size=4",
    "sft.max_length=256",
    "sft.eval_fraction=0",
    "sft.save_steps=100",
    "chain.sample_limit=32",
    "rm.max_steps=16",
    "rm.batch_size=4",
    "rm.stats_examples=64",
    "rm.save_steps=100",
]
TRL_PAD_TOKEN = "<|endoftext|>"  # see bench/trl_ppo_driver.py: TRL needs a pad id unused in prompts


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- cached preparation ------------------------------------------------------------------------


def prepare_adapters(cache: Path, dtype: str) -> Path:
    """The run directory holding sft/ and rm/ adapters, made with our own chain once per dtype."""
    run_dir = cache / f"run-{dtype}"
    ready = [run_dir / "sft" / "adapter_config.json", run_dir / "rm" / "reward_stats.json"]
    if all(path.is_file() for path in ready):
        return run_dir
    log(f"preparing SFT and reward adapters in {run_dir} (once; a few minutes)")
    command = [
        tool("align"), "run", str(RECIPE), f"run_dir={run_dir}", f"model.dtype={dtype}",
        *PREP_OVERRIDES, "--until", "rm",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0 or not all(path.is_file() for path in ready):
        sys.exit(f"preparation failed: {' '.join(command)}\n{(done.stdout + done.stderr)[-3000:]}")
    return run_dir


def trl_folder(cache: Path) -> Path:
    """Where TRL 1.12.0 is installed alone (pip --target --no-deps)."""
    return cache / "bench-packages" / f"trl-{TRL_VERSION}"


def trl_env(folder: Path) -> dict[str, str]:
    """The TRL side runs this very interpreter, so it has every package of this environment
    (torch included, whether it is a venv or not), with TRL 1.12.0 first on its path. TRL's own
    requirements (accelerate>=1.4, datasets>=4.7, transformers>=4.56.2) are met by this
    environment's."""
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def trl_version(folder: Path) -> str:
    """The TRL version the TRL side imports: 1.12.0 once installed; another also shows the side
    sees this environment's packages."""
    return subprocess.run(
        [sys.executable, "-c", "import torch, trl; print(trl.__version__)"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **trl_env(folder)},
    ).stdout.strip()


def install_trl(cache: Path) -> Path:
    """TRL 1.12.0 in its own folder, installed once."""
    folder = trl_folder(cache)
    marker = folder / ".ready"
    if marker.is_file():
        return folder
    log(f"installing trl=={TRL_VERSION} into {folder} (once)")
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(folder),
            f"trl=={TRL_VERSION}",
        ],
        check=True,
    )
    version = trl_version(folder)
    if version != TRL_VERSION:
        sys.exit(f"{folder}: expected trl {TRL_VERSION}, imports {version}")
    marker.write_text(version + "\n")
    return folder


def merged_reward_model(cache: Path, rm_dir: Path) -> Path:
    """Our reward adapter and head merged into a full sequence-classification model, for TRL."""
    import torch

    from alignment.reward import load_reward_model, score

    target = cache / f"reward-merged-{rm_dir.parent.name}"
    stamp = str((rm_dir / "adapter_model.safetensors").stat().st_mtime_ns)
    if (target / "source.txt").is_file() and (target / "source.txt").read_text() == stamp:
        return target
    log(f"merging {rm_dir} into {target}")
    # Merged in float32, so the merge adds no rounding; TRL loads it in the benchmark's dtype.
    adapter_model, tokenizer, _ = load_reward_model(rm_dir, quantization="none", dtype="float32")
    probe = [
        [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How are you?"},
        ],
    ]
    expected = score(adapter_model, tokenizer, probe)
    merged = adapter_model.merge_and_unload()
    merged.eval()
    got = score(merged, tokenizer, probe)
    if not torch.allclose(expected, got, atol=1e-3):
        sys.exit(f"merged reward model scores {got.tolist()}, adapter {expected.tolist()}")
    shutil.rmtree(target, ignore_errors=True)
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "source.txt").write_text(stamp)
    return target


# --- the two runs ------------------------------------------------------------------------------


def prompt_batches(
    tokenizer: Any, prompts: str, updates: int, batch_size: int, seed: int
) -> list[list[list[int]]]:
    """Token ids of the prompts `align ppo` rolls out at each update, from its own code."""
    encoded = [encode_prompt(tokenizer, messages) for _, messages in read_prompts(prompts)]
    return [
        [encoded[i] for i in prompt_indices(len(encoded), seed, update, batch_size)]
        for update in range(updates)
    ]


def run_ours(
    args: argparse.Namespace, run_dir: Path, seed: int, work: Path
) -> tuple[Measured, list[dict]]:
    command = [
        tool("align"), "ppo", str(RECIPE), f"run_dir={work / 'align'}", f"seed={seed}",
        "model.quantization=none",
        f"model.dtype={args.dtype}",
        f"ppo.sft_adapter={run_dir / 'sft'}", f"ppo.reward_adapter={run_dir / 'rm'}",
        f"ppo.prompts={args.prompts}", f"ppo.updates={args.updates}",
        f"ppo.rollout_batch_size={args.batch_size}", f"ppo.minibatch_size={args.minibatch_size}",
        f"ppo.ppo_epochs={args.ppo_epochs}", f"ppo.max_new_tokens={args.max_new_tokens}",
        f"ppo.learning_rate={args.learning_rate}", f"ppo.kl_coef={args.kl_coef}",
        "ppo.temperature=1.0", "ppo.top_p=1.0", "ppo.unfinished_penalty=-1.0",
        f"ppo.save_every={args.updates}", f"ppo.sample_every={args.updates}",
    ]  # fmt: skip
    measured = run_measured("align-ppo", command, env=threads_env(args.threads))
    metrics = [json.loads(line) for line in (work / "align" / "ppo" / "metrics.jsonl").open()]
    return measured, metrics


def run_trl(
    args: argparse.Namespace,
    trl: Path,
    run_dir: Path,
    reward_dir: Path,
    batches: list[list[list[int]]],
    seed: int,
    work: Path,
    model_dir: str,
) -> tuple[Measured, list[dict]]:
    stats = json.loads((run_dir / "rm" / "reward_stats.json").read_text())
    spec = {
        "model_dir": model_dir,
        "dtype": args.dtype,
        "sft_adapter": str(run_dir / "sft"),
        "reward_model": str(reward_dir),
        "reward_mean": stats["mean"],
        "reward_std": max(stats["std"], 1e-6),  # as align ppo clamps it
        "pad_token": TRL_PAD_TOKEN,
        "prompt_batches": batches,
        "rollout_batch_size": args.batch_size,
        "minibatch_size": args.minibatch_size,
        "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens,
        "temperature": 1.0,
        "missing_eos_penalty": 1.0,
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
        "value_coef": 0.1,
        "seed": seed,
        "output_dir": str(work / "trl"),
    }
    spec_path = work / "trl-spec.json"
    spec_path.write_text(json.dumps(spec))
    command = [sys.executable, str(ROOT / "bench" / "trl_ppo_driver.py"), str(spec_path)]
    measured = run_measured("trl-ppo", command, env=threads_env(args.threads) | trl_env(trl))
    updates = [
        json.loads(line)
        for line in measured.output.splitlines()
        if line.startswith('{"trl_update"')
    ]
    if len(updates) != args.updates:
        sys.exit(f"TRL logged {len(updates)} updates, expected {args.updates}")
    return measured, updates


# --- fair reward: greedy answers of each final policy, scored by the same reward model ---------


def greedy_rewards(
    adapters: dict[str, Path], rm_dir: Path, prompts: str, count: int, max_new_tokens: int
) -> dict[str, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from alignment.reward import load_reward_model, score

    model_cfg = ModelConfig()
    source = resolve_model(model_cfg)
    tokenizer = load_tokenizer(model_cfg, source)
    chats = [messages for _, messages in read_prompts(prompts)][:count]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=8)
    answers = {}
    for name, adapter in adapters.items():
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        policy = PeftModel.from_pretrained(base, adapter)
        policy.eval()
        answers[name] = [c.text for c in generate(policy, tokenizer, chats, settings)]
        del policy, base
    reward_model, rm_tokenizer, _ = load_reward_model(rm_dir, quantization="none")
    result = {}
    for name, texts in answers.items():
        conversations = [
            [*chat, {"role": "assistant", "content": text}]
            for chat, text in zip(chats, texts, strict=True)
        ]
        result[name] = score(reward_model, rm_tokenizer, conversations).mean().item()
    return result


# --- report ------------------------------------------------------------------------------------


def gain(values: list[float]) -> float:
    """Mean of the last quarter of updates minus mean of the first quarter (at least one each)."""
    k = max(1, len(values) // 4)
    return mean(values[-k:]) - mean(values[:k])


def dry_run(args: argparse.Namespace) -> None:
    """What a run needs, checked without training: the commands, the inputs, and that the TRL
    side (this interpreter) imports torch and TRL."""
    cache = args.cache or cache_root(ModelConfig()) / "bench-ppo"
    folder = trl_folder(cache_root(ModelConfig()))
    prompts = {
        name: len(read_prompts(str(ROOT / getattr(args, name))))
        for name in ("prompts", "eval_prompts")
    }
    installed = (folder / ".ready").is_file()
    print(f"align: {tool('align')}")
    print(f"prompts: {prompts['prompts']} to train on, {prompts['eval_prompts']} held out")
    print(
        f"TRL side: {sys.executable} with trl {trl_version(folder)}"
        + ("" if installed else f" (trl=={TRL_VERSION} is installed into {folder} first)")
    )
    dtype = args.dtype or str(compute_dtype(ModelConfig())).removeprefix("torch.")
    ready = (cache / f"run-{dtype}" / "rm" / "reward_stats.json").is_file()
    print(f"adapters: {'cached' if ready else 'prepared first'} under {cache}")
    print(f"runs: {len(args.seeds)} seed(s) x {args.updates} updates, both sides at once")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts rolled out per update")
    parser.add_argument("--minibatch-size", type=int, default=4, help="rollouts per optimizer step")
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--prompts", default="data/prompts.jsonl")
    parser.add_argument("--eval-prompts", default="data/prompts_heldout.jsonl")
    parser.add_argument("--eval-count", type=int, default=24, help="held-out prompts re-scored")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[42, 1, 2],
        help="one pair of runs per seed (prompt order, sampling); the rows 'all' average them",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="both sides' compute dtype; default: what model.dtype=auto picks here",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="default: <alignment cache>/bench-ppo"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the environment and inputs, print what a run would prepare and run, and stop",
    )
    args = parser.parse_args()
    if args.batch_size % args.minibatch_size:
        parser.error("--batch-size must be a multiple of --minibatch-size (TRL needs it)")
    if args.dry_run:
        dry_run(args)
        return

    import torch

    torch.set_num_threads(args.threads)  # the re-scoring below runs in this process
    args.dtype = args.dtype or str(compute_dtype(ModelConfig())).removeprefix("torch.")
    for name in ("prompts", "eval_prompts"):  # the children run in ROOT; so do these paths
        setattr(args, name, str(ROOT / getattr(args, name)))
    cache = args.cache or cache_root(ModelConfig()) / "bench-ppo"
    run_dir = prepare_adapters(cache, args.dtype)
    trl = install_trl(cache_root(ModelConfig()))
    reward_dir = merged_reward_model(cache, run_dir / "rm")
    tokenizer = load_tokenizer(ModelConfig())
    model_dir = resolve_model(ModelConfig())
    root = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    log(f"work directory {root}")

    rows: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    adapters = {"sft": run_dir / "sft"}
    phases = ("seconds_generate", "seconds_score", "seconds_train")
    per_phase: dict[str, list[float]] = {p: [] for p in phases}
    for seed in args.seeds:
        work = root / f"seed-{seed}"
        work.mkdir()
        batches = prompt_batches(tokenizer, args.prompts, args.updates, args.batch_size, seed)
        # Both sides at once, one thread each on the 2 cores: the CPU is shared with other work
        # whose load swings by minutes, and one side after the other gave one a quieter time.
        with ThreadPoolExecutor(max_workers=2) as pool:
            ours_job = pool.submit(run_ours, args, run_dir, seed, work)
            trl_job = pool.submit(
                run_trl, args, trl, run_dir, reward_dir, batches, seed, work, model_dir
            )
            (ours, ours_metrics), (trl, trl_updates) = ours_job.result(), trl_job.result()
        log(f"seed {seed}: align ppo {ours.wall_seconds:.0f} s, {ours.peak_rss_mib:.0f} MiB peak")
        log(f"seed {seed}: TRL {trl.wall_seconds:.0f} s, {trl.peak_rss_mib:.0f} MiB peak")
        rows["ours"].append(
            {
                "seed": seed,
                "rss": ours.peak_rss_mib,
                "seconds": mean(sum(m[p] for p in phases) for m in ours_metrics),
                "train_gain": gain([m["reward"] for m in ours_metrics]),
                "wall": ours.wall_seconds,
            }
        )
        rows["trl"].append(
            {
                "seed": seed,
                "rss": trl.peak_rss_mib,
                "seconds": mean(u["seconds"] for u in trl_updates),
                "train_gain": gain([u["objective/scores"] for u in trl_updates]),
                "wall": trl.wall_seconds,
            }
        )
        for p in phases:
            per_phase[p] += [m[p] for m in ours_metrics]
        adapters |= {f"ours-{seed}": work / "align" / "ppo", f"trl-{seed}": work / "trl"}

    log("re-scoring greedy answers of SFT and every final policy")
    greedy = greedy_rewards(
        adapters, run_dir / "rm", args.eval_prompts, args.eval_count, args.max_new_tokens
    )
    for side, side_rows in rows.items():
        for row in side_rows:
            row["gain"] = greedy[f"{side}-{row['seed']}"] - greedy["sft"]
    (root / "results.json").write_text(
        json.dumps({"args": vars(args) | {"cache": str(cache)}, "greedy": greedy, **rows}, indent=2)
    )
    summary = {
        side: {
            "rss": max(r["rss"] for r in side_rows),
            **{k: mean(r[k] for r in side_rows) for k in ("seconds", "gain", "train_gain", "wall")},
        }
        for side, side_rows in rows.items()
    }
    ours_sum, trl_sum = summary["ours"], summary["trl"]
    ratio = {k: ours_sum[k] / trl_sum[k] for k in ("rss", "seconds", "wall")}
    print(f"## PPO benchmark, {date.today()}, {machine()}")
    print(
        f"SmolLM2-135M-Instruct, {args.dtype}, {args.updates} updates x {args.batch_size} prompts, "
        f"minibatch {args.minibatch_size}, {args.ppo_epochs} PPO epochs, {args.max_new_tokens} "
        f"new tokens, lr {args.learning_rate}, kl_coef {args.kl_coef}; seeds "
        f"{', '.join(map(str, args.seeds))}, both sides at once, {args.threads} torch thread(s) "
        f"each; reward re-scored on {args.eval_count} held-out prompts (greedy). SFT policy's "
        f"mean score: {greedy['sft']:.3f}"
    )
    print(
        "| run | seed | peak RSS MiB | s / update | reward gain (greedy, held-out) | "
        "reward gain (in training, normalised) | wall s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    labels = {"ours": "align ppo", "trl": f"TRL {TRL_VERSION} PPOTrainer"}
    for side, side_rows in rows.items():
        for row in (
            [*side_rows, {"seed": "all", **summary[side]}] if len(side_rows) > 1 else side_rows
        ):
            print(
                f"| {labels[side]} | {row['seed']} | {row['rss']:.0f} | {row['seconds']:.1f} | "
                f"{row['gain']:+.3f} | {row['train_gain']:+.3f} | {row['wall']:.0f} |"
            )
    print(
        f"| ours / TRL | {'all' if len(args.seeds) > 1 else args.seeds[0]} | {ratio['rss']:.2f}x "
        f"(target <= 0.5) | {ratio['seconds']:.2f}x (target <= 0.8) | "
        f"{ours_sum['gain'] - trl_sum['gain']:+.3f} (target >= 0) | "
        f"{ours_sum['train_gain'] - trl_sum['train_gain']:+.3f} | {ratio['wall']:.2f}x |"
    )
    print(
        "align ppo seconds per phase: "
        + ", ".join(f"{p.removeprefix('seconds_')} {mean(v):.1f}" for p, v in per_phase.items())
    )
    print(f"details: {root / 'results.json'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
