"""The quickstart chain, stage by stage, for one or more seeds: wall time and peak memory of each
stage, and whether the final policy beats SFT on held-out prompts, with 95% intervals.

    python bench/quickstart.py [--seeds 42 1 2] [--run-dir DIR] [key=value ...]

Runs `align run recipes/quickstart.yaml --until STAGE` once per stage in a fresh run directory per
seed, each as its own process (so each stage's peak RSS is its own), then prints the evaluation:
win rate over SFT on the judge (raw and at equal answer length), score gains and KL to SFT, each
with its bootstrap interval over prompts, and the answer lengths beside them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

from common import ROOT, machine, run_measured, tool

from alignment.config import load_recipe
from alignment.stats import Interval

RECIPE = ROOT / "recipes" / "quickstart.yaml"


def run_seed(run_dir: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """The chain for one seed, a process per stage; prints its stage table, returns eval.json."""
    overrides = [f"run_dir={run_dir}", f"seed={seed}", *overrides]
    stages = load_recipe(RECIPE, overrides).chain.stages
    results = []
    for stage in stages:
        command = [tool("align"), "run", str(RECIPE), *overrides, "--until", stage]
        results.append((stage, run_measured(f"quickstart-{seed}-{stage}", command)))
    total = sum(m.wall_seconds for _, m in results)
    print(f"\n## seed {seed}\n| stage | wall s | peak RSS MiB |\n| --- | --- | --- |")
    for stage, measured in results:
        print(f"| {stage} | {measured.wall_seconds:.0f} | {measured.peak_rss_mib:.0f} |")
    peak = max(m.peak_rss_mib for _, m in results)
    print(f"| total | {total:.0f} ({total / 60:.1f} min) | {peak:.0f} |")
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    evaluation["minutes"] = total / 60
    return evaluation


def describe(seed: int, evaluation: dict[str, Any]) -> str:
    final = evaluation["final_stage"]
    sft, tuned = evaluation["sft"], evaluation[final]

    def shown(key: str) -> str:
        return str(Interval(**evaluation[key]))

    lines = [
        f"seed {seed}: {evaluation['prompts']} held-out prompts, {evaluation['minutes']:.1f} min",
        f"  win rate of {final} over SFT (judge): {shown('win_rate')}; at equal length: "
        f"{shown('length_controlled_win_rate')}",
        f"  win rate where SFT's answer ends ({evaluation['prompts_where_sft_ends']} prompts): "
        + (shown("win_rate_where_sft_ends") if "win_rate_where_sft_ends" in evaluation else "-"),
        f"  judge score: SFT {Interval(**sft['judge_score'])} -> {final} "
        f"{Interval(**tuned['judge_score'])} (gain {shown('judge_score_gain')})",
        f"  answer length (tokens): SFT {Interval(**sft['answer_tokens'])} -> {final} "
        f"{Interval(**tuned['answer_tokens'])}",
        f"  KL to SFT (nats per answer): {shown('kl_to_sft')}",
    ]
    if "kl_bound" in evaluation:
        bound = evaluation["kl_bound"]
        lines[-1] += f" ({'within' if bound['within'] else 'above'} the recipe's {bound['max']})"
    if "judge_criteria" in evaluation:
        gains = (
            f"{name} {Interval(**means['gain'])}"
            for name, means in evaluation["judge_criteria"].items()
        )
        lines.append(f"  judge criteria, gain over SFT: {'; '.join(gains)}")
    if "reward_gain" in evaluation:
        gold = "gold" if evaluation["reward_model"]["gold"] else "this run's RM (optimised)"
        lines.append(
            f"  reward by {gold}: gain {shown('reward_gain')}; win rate {shown('reward_win_rate')}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a new temp directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    root = args.run_dir or Path(tempfile.mkdtemp(prefix="bench-quickstart-"))
    print(f"# Quickstart chain, {date.today()}, {machine()}")
    seeds = " ".join(map(str, args.seeds))
    print(
        f"command: python bench/quickstart.py --seeds {seeds} {' '.join(args.overrides)}".rstrip()
    )
    evaluations = {
        seed: run_seed(root / f"seed-{seed}", seed, args.overrides) for seed in args.seeds
    }
    print()
    for seed, evaluation in evaluations.items():
        print(describe(seed, evaluation))
    wins = [e["win_rate"]["low"] > 0.5 for e in evaluations.values()]
    controlled = [e["length_controlled_win_rate"]["low"] > 0.5 for e in evaluations.values()]
    bounds = [e["kl_bound"]["within"] for e in evaluations.values() if "kl_bound" in e]
    within = f"{sum(bounds)}/{len(bounds)}" if bounds else "the recipe states no bound"
    print(
        f"seeds where the final policy beats SFT (interval above 0.5): {sum(wins)}/{len(wins)}; "
        f"at equal length: {sum(controlled)}/{len(controlled)}; KL within the recipe's bound: "
        f"{within}"
    )
    print(f"reports: {root}/seed-*/report.html")


if __name__ == "__main__":
    main()
