"""The quickstart chain, stage by stage: wall time and peak memory of each, and what PPO gained.

    python bench/quickstart.py [--run-dir DIR] [key=value ...]

Runs `align run recipes/quickstart.yaml --until STAGE` once per stage in a fresh run directory,
each as its own process (so each stage's peak RSS is its own), then prints the judge-score gain
of the PPO policy over SFT on held-out prompts and its KL to SFT, from the eval stage.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import date
from pathlib import Path

from common import ROOT, machine, run_measured

from alignment.config import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="default: a new temp directory")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="bench-quickstart-")) / "run"
    recipe_path = ROOT / "recipes" / "quickstart.yaml"
    overrides = [f"run_dir={run_dir}", *args.overrides]
    stages = load_recipe(recipe_path, overrides).chain.stages

    results = []
    for stage in stages:
        command = ["align", "run", str(recipe_path), *overrides, "--until", stage]
        results.append((stage, run_measured(f"quickstart-{stage}", command)))
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())

    total = sum(m.wall_seconds for _, m in results)
    print(f"# Quickstart chain, {date.today()}, {machine()}")
    print(f"command: python bench/quickstart.py {' '.join(args.overrides)}".rstrip())
    print("| stage | wall s | peak RSS MiB |")
    print("| --- | --- | --- |")
    for stage, measured in results:
        print(f"| {stage} | {measured.wall_seconds:.0f} | {measured.peak_rss_mib:.0f} |")
    print(
        f"| total | {total:.0f} ({total / 60:.1f} min) | {max(m.peak_rss_mib for _, m in results):.0f} |"
    )
    final = evaluation["final_stage"]
    sft, tuned = evaluation["sft"], evaluation[final]
    print(
        f"held-out prompts: {evaluation['prompts']}; judge score SFT {sft['judge_score']:.3f} -> "
        f"{final} {tuned['judge_score']:.3f} (gain {tuned['judge_score'] - sft['judge_score']:+.3f}, "
        f"{tuned['judge_score'] / sft['judge_score']:.2f}x); win rate {evaluation['win_rate']:.2f}; "
        f"KL to SFT {evaluation['kl_to_sft']:.3f} nats per answer"
    )
    if sft.get("gold_reward") is not None:
        print(
            f"reward model score: SFT {sft['gold_reward']:.3f} -> {final} {tuned['gold_reward']:.3f}"
        )
    print(
        f"answer length (tokens): SFT {sft['answer_tokens']:.1f} -> {final} {tuned['answer_tokens']:.1f}"
    )
    print(f"report: {run_dir / 'report.html'}")


if __name__ == "__main__":
    main()
