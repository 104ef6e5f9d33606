"""How well a reward model orders held-out preferences (`align eval rm`, and `align rm`'s eval).

- accuracy: share of (better, worse) pairs the RM scores strictly higher for the better answer;
- mean margin: mean of r_better - r_worse;
- Kendall's tau-b between the RM's order and the annotators' order, averaged over the K-way
  rankings (K > 2) where it is defined;
- the accuracy's 95% bootstrap interval over pairs, the accuracy on pairs whose preferred answer
  is the longer one, and the accuracy of the rule "the shorter answer wins" on the same pairs (a
  length baseline any RM must beat);
- accuracy per length bucket: by conversation length (quartiles of the pairs' longer candidate,
  in tokens after truncation), and by whether the preferred answer is longer, shorter or of
  similar length (within 10%) than the other. A length-biased RM is good on one side and poor on
  the other.
Printed as a table and written as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from alignment.agreement import kendall_tau_b
from alignment.preferences import Comparison, Format, read_preferences
from alignment.reward.encoding import EncodedComparison, encode_comparison
from alignment.reward.loading import load_reward_model
from alignment.reward.scoring import comparison_scores
from alignment.stats import Interval, mean_interval


def _bucket(records: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "pairs": len(records),
        "accuracy": sum(r["difference"] > 0 for r in records) / len(records),
        "mean_margin": sum(r["difference"] for r in records) / len(records),
    }


def _by_length(records: list[dict[str, float]]) -> list[dict[str, Any]]:
    lengths = sorted(r["length"] for r in records)
    edges = sorted({lengths[(len(lengths) * q) // 4] for q in (1, 2, 3)} | {lengths[-1]})
    buckets = []
    low = 0
    for high in edges:
        inside = [r for r in records if low < r["length"] <= high]
        if inside:
            buckets.append({"bucket": f"{low + 1}-{high} tokens", **_bucket(inside)})
        low = high
    return buckets


PREFERRED_LONGER = "preferred answer longer"


def _answer_side(better: float, worse: float) -> str:
    if better > worse * 1.1:
        return PREFERRED_LONGER
    if worse > better * 1.1:
        return "preferred answer shorter"
    return "similar length (within 10%)"


def preference_report(
    comparisons: list[Comparison], rows: list[EncodedComparison], scores: list[torch.Tensor]
) -> dict[str, Any]:
    """Accuracy, margin, Kendall's tau and length buckets of scored, encoded comparisons."""
    records: list[dict[str, float]] = []
    taus: list[float] = []
    for comparison, row, rewards in zip(comparisons, rows, scores, strict=True):
        tails = row.tails
        for b, w in comparison.pairs:
            records.append(
                {
                    "difference": (rewards[b] - rewards[w]).item(),
                    "length": len(row.prefix) + max(len(tails[b]), len(tails[w])),
                    "better_tokens": len(tails[b]),
                    "worse_tokens": len(tails[w]),
                }
            )
        if len(comparison.answers) > 2:
            # RM order: a higher reward is a better (smaller) rank.
            tau = kendall_tau_b(comparison.ranks, (-rewards).tolist())
            if tau is not None:
                taus.append(tau)
    sides: dict[str, list[dict[str, float]]] = {}
    for record in records:
        side = _answer_side(record["better_tokens"], record["worse_tokens"])
        sides.setdefault(side, []).append(record)
    overall = _bucket(records)
    longer = sides.get(PREFERRED_LONGER, [])
    return {
        "comparisons": len(comparisons),
        "pairs": overall["pairs"],
        "accuracy": overall["accuracy"],
        "accuracy_interval": mean_interval([float(r["difference"] > 0) for r in records]).as_dict(),
        # The headline beside accuracy: a length-biased RM fails where the longer answer won.
        "preferred_longer_accuracy": _bucket(longer)["accuracy"] if longer else None,
        "shorter_wins_accuracy": sum(
            1.0
            if r["better_tokens"] < r["worse_tokens"]
            else 0.5 * (r["better_tokens"] == r["worse_tokens"])
            for r in records
        )
        / len(records),
        "mean_margin": overall["mean_margin"],
        "rankings": sum(len(c.answers) > 2 for c in comparisons),
        "kendall_tau": sum(taus) / len(taus) if taus else None,
        "by_length": _by_length(records),
        "by_answer_length": [{"bucket": side, **_bucket(sides[side])} for side in sorted(sides)],
    }


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    tau = report["kendall_tau"]
    summary = Table(title=f"Reward model {report['model']} on {report['data']['source']}")
    columns = (
        "comparisons",
        "pairs",
        "accuracy [95% CI]",
        "preferred longer",
        "rule: shorter wins",
        "mean margin",
        "Kendall tau (rankings)",
    )
    for column in columns:
        summary.add_column(column, justify="right")
    longer = report["preferred_longer_accuracy"]
    summary.add_row(
        str(report["comparisons"]),
        str(report["pairs"]),
        str(Interval(**report["accuracy_interval"])),
        f"{longer:.3f}" if longer is not None else "n/a",
        f"{report['shorter_wins_accuracy']:.3f}",
        f"{report['mean_margin']:.3f}",
        f"{tau:.3f} ({report['rankings']})" if tau is not None else "n/a",
    )
    buckets = Table(title="Accuracy by length")
    for column in ("bucket", "pairs", "accuracy", "mean margin"):
        buckets.add_column(column, justify="left" if column == "bucket" else "right")
    for row in [*report["by_length"], *report["by_answer_length"]]:
        buckets.add_row(
            row["bucket"], str(row["pairs"]), f"{row['accuracy']:.3f}", f"{row['mean_margin']:.3f}"
        )
    console = Console()
    console.print(summary)
    console.print(buckets)
    skipped = report["data"]["skipped"]
    if skipped:
        console.print(f"skipped rows: {skipped}")


def evaluate_reward_model(
    path: str | Path,
    data: str,
    split: str = "train",
    fmt: Format = "auto",
    batch_size: int = 8,
    max_length: int | None = None,
    quantization: str | None = None,
) -> dict[str, Any]:
    """Score every comparison of `data` with the reward adapter at `path`; return the report."""
    preferences = read_preferences(data, split, fmt)  # before the model load: bad rows fail fast
    model, tokenizer, stats = load_reward_model(path, quantization)
    max_length = max_length or stats.get("max_length") or 512
    rows = [encode_comparison(tokenizer, c, max_length) for c in preferences.comparisons]
    # The shared-prefix mask needs a kernel that takes a 4D mask (sdpa, eager).
    share = getattr(model.config, "_attn_implementation", "sdpa") != "flash_attention_2"
    scores = comparison_scores(model, rows, tokenizer.pad_token_id, batch_size, share)
    return {
        "model": str(path),
        "max_length": max_length,
        **preference_report(preferences.comparisons, rows, scores),
        "data": preferences.report(),
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
