"""Does a run's reward model read the prompt? Each held-out answer scored under its own prompt and
under another prompt: how often its own prompt scores higher, and by how much (in the reward's
training standard deviations), each with a 95% bootstrap interval over prompts.

    python bench/rm_reads_prompt.py RUN_DIR [RUN_DIR ...] [--answers FILE]

Reads RUN_DIR/rm and the SFT answers of RUN_DIR/eval/answers.jsonl (or of FILE, so that reward
models of several runs are probed on the same answers). A reward model that ignores the prompt
scores both the same (0.5, 0 std); one that learned what the rankings asked of an answer to
its prompt scores the answer higher under its own prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import machine

from alignment.reward import load_reward_model, score
from alignment.runs import read_jsonl
from alignment.stats import mean_interval, outcomes

# The other prompt is this many rows on, so every answer is paired with a prompt of another row.
OTHER_ROW = 7


def probe(run_dir: Path, answers_file: Path) -> str:
    rows = read_jsonl(answers_file)
    model, tokenizer, stats = load_reward_model(run_dir / "rm")

    def rewards(prompt_rows: list[dict]) -> list[float]:
        conversations = [
            [*prompt["messages"], {"role": "assistant", "content": row["sft_answer"]}]
            for prompt, row in zip(prompt_rows, rows, strict=True)
        ]
        return score(model, tokenizer, conversations, max_length=stats.get("max_length")).tolist()

    own = rewards(rows)
    other = rewards(rows[OTHER_ROW:] + rows[:OTHER_ROW])
    preferred = mean_interval(outcomes(own, other), seed=0)
    gap = mean_interval([(a - b) / stats["std"] for a, b in zip(own, other, strict=True)], seed=0)
    return (
        f"{run_dir}: {len(rows)} answers; own prompt scores higher {preferred}; by {gap} reward std"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--answers", type=Path, help="default: each run's eval/answers.jsonl")
    args = parser.parse_args()
    print(f"# Does the reward model read the prompt? {machine()}")
    for run_dir in args.run_dirs:
        print(probe(run_dir, args.answers or run_dir / "eval" / "answers.jsonl"))


if __name__ == "__main__":
    main()
