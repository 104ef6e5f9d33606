"""The run report: one self-contained HTML file (plots inlined as SVG) and a Markdown twin.

Built only from what the stages wrote into the run directory, so `align report runs/<name>`
rebuilds it at any time, offline.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from alignment.runs import read_jsonl
from alignment.stats import Interval


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def _svg_plot(title: str, x_label: str, series: dict[str, tuple[list[float], list[float]]]) -> str:
    figure, axes = plt.subplots(figsize=(5.2, 2.8))
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.4, label=label)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(x_label, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=7)
    return _svg(figure)


def _svg(figure: plt.Figure) -> str:
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})  # same run, same file
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # inline: drop the XML prolog and doctype


def _series(
    rows: list[dict[str, Any]], x: str, *keys: str
) -> dict[str, tuple[list[float], list[float]]]:
    return {
        key: ([r[x] for r in rows if key in r], [r[key] for r in rows if key in r])
        for key in keys
        if any(key in r for r in rows)
    }


def _fmt(value: Any) -> str:
    if isinstance(value, dict):  # an estimate with its interval, as eval.json stores it
        return str(Interval(**value))
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else str(value)


def _reward_label(evaluation: dict[str, Any]) -> str:
    model = evaluation.get("reward_model") or {}
    if model.get("gold"):
        return f"gold reward (independent RM {Path(model['adapter']).name})"
    if evaluation["final_stage"] == "ppo":
        return "reward by this run's RM (the one PPO optimised: not gold)"
    return "reward by this run's RM"


def _human_rows(human: dict[str, Any] | None, stage: str) -> list[tuple[str, str, str]]:
    """The human A/B evaluation's lines of the table: overall, then per annotator."""
    if not human:
        return []
    verdicts = ", ".join(f"{label} {n}" for label, n in human["verdicts"].items())
    rows = [(f"human A/B judgements ({human['pairs']} pairs)", "", verdicts)]
    if "win_rate" in human:
        rows.append((f"human win rate of {stage} over SFT", "", _fmt(human["win_rate"])))
        for name, own in human["per_annotator"].items():
            rows.append(
                (f"  by {name} ({own['judgements']} judgements)", "", _fmt(own["win_rate"]))
            )
    return rows


def _svg_evaluation(evaluation: dict[str, Any]) -> str:
    """Win rates with their 95% intervals as error bars, against the coin-flip line."""
    stage = evaluation["final_stage"]
    bars = {
        "win rate (judge)": evaluation["win_rate"],
        "equal length (judge)": evaluation["length_controlled_win_rate"],
    }
    if "reward_win_rate" in evaluation:
        bars["win rate (reward)"] = evaluation["reward_win_rate"]
    if "win_rate" in evaluation.get("human", {}):
        bars["win rate (humans)"] = evaluation["human"]["win_rate"]
    estimates = [v["estimate"] for v in bars.values()]
    errors = [
        [v["estimate"] - v["low"] for v in bars.values()],
        [v["high"] - v["estimate"] for v in bars.values()],
    ]
    figure, axes = plt.subplots(figsize=(5.2, 2.8))
    axes.bar(range(len(bars)), estimates, yerr=errors, capsize=4, color="#88a")
    axes.axhline(0.5, color="#a44", linewidth=1, linestyle="--")
    axes.set_xticks(range(len(bars)), list(bars), fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_title(
        f"{stage} vs SFT on {evaluation['prompts']} held-out prompts (95% intervals)", fontsize=10
    )
    return _svg(figure)


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.html and report.md into the run directory; returns their paths."""
    sft_metrics = _rows(run_dir / "sft" / "metrics.jsonl")
    ppo_metrics = _rows(run_dir / "ppo" / "metrics.jsonl")
    rm_metrics = _rows(run_dir / "rm" / "metrics.jsonl")
    rm_summary = _load(run_dir / "rm" / "summary.json") or {}
    evaluation = _load(run_dir / "eval" / "eval.json")
    answers = _rows(run_dir / "eval" / "answers.jsonl")
    name = run_dir.name

    plots = []
    if sft_metrics:
        plots.append(
            _svg_plot("SFT loss", "step", _series(sft_metrics, "step", "loss", "eval_loss"))
        )
    if rm_metrics:
        accuracy = _series(rm_metrics, "step", "eval_accuracy", "accuracy")
        if accuracy:
            plots.append(_svg_plot("Reward model accuracy", "step", accuracy))
    if ppo_metrics:
        plots.append(
            _svg_plot("PPO reward (normalised)", "update", _series(ppo_metrics, "update", "reward"))
        )
        plots.append(
            _svg_plot("PPO KL to SFT (per answer)", "update", _series(ppo_metrics, "update", "kl"))
        )
        plots.append(
            _svg_plot(
                "PPO answer length (tokens)",
                "update",
                _series(ppo_metrics, "update", "answer_length"),
            )
        )

    table: list[tuple[str, str, str]] = []
    if evaluation:
        stage = evaluation["final_stage"]
        plots.append(_svg_evaluation(evaluation))
        for key, label in (
            ("judge_score", "judge score"),
            ("reward", _reward_label(evaluation)),
            ("answer_tokens", "answer length (tokens)"),
            ("finished", "answers that end"),
        ):
            if evaluation["sft"].get(key) is not None:
                table.append((label, _fmt(evaluation["sft"][key]), _fmt(evaluation[stage][key])))
        for key, label in (
            ("judge_score_gain", "judge score gain over SFT"),
            ("reward_gain", "reward gain over SFT"),
            ("win_rate", f"win rate of {stage} over SFT (judge)"),
            ("length_controlled_win_rate", "win rate at equal answer length (judge)"),
            ("win_rate_where_sft_ends", "win rate where SFT's answer ends (judge)"),
            ("reward_win_rate", f"win rate of {stage} over SFT (reward)"),
        ):
            if key in evaluation:
                table.append((label, "", _fmt(evaluation[key])))
        for criterion, means in evaluation.get("judge_criteria", {}).items():
            table.append((f"judge criterion: {criterion}", _fmt(means["sft"]), _fmt(means[stage])))
        table.append(("KL to SFT (per answer)", "0", _fmt(evaluation["kl_to_sft"])))
        table += _human_rows(evaluation.get("human"), stage)
    if "eval_accuracy" in rm_summary:
        table.append(("reward model held-out accuracy", "", _fmt(rm_summary["eval_accuracy"])))
    final = evaluation["final_stage"] if evaluation else "final"
    method = (
        f"Intervals: {evaluation['confidence']:.0%} bootstrap over the {evaluation['prompts']} "
        f"prompts ({evaluation['bootstrap_resamples']} resamples). Win rate at equal answer "
        f"length: {evaluation['length_control']}."
        if evaluation
        else ""
    )

    md = [f"# Alignment report: {name}", ""]
    if table:
        md += [
            f"| metric | SFT | {final} |",
            "| --- | --- | --- |",
            *(f"| {a} | {b} | {c} |" for a, b, c in table),
            "",
            method,
            "",
        ]
    if answers:
        md += ["## Sample answers", ""]
        for row in answers[:5]:
            md += [
                f"**Prompt:** {row['prompt']}",
                "",
                f"- SFT: {row.get('sft_answer', '')}",
                f"- {final}: {row.get(f'{final}_answer', '')}",
                "",
            ]
    md_path = run_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    esc = html.escape
    rows_html = "".join(
        f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in table
    )
    samples_html = "".join(
        f"<div class='sample'><p><b>Prompt:</b> {esc(row['prompt'])}</p>"
        f"<p><b>SFT</b> (judge {_fmt(row.get('sft_judge'))}): {esc(row.get('sft_answer', ''))}</p>"
        f"<p><b>{esc(final)}</b> (judge {_fmt(row.get(f'{final}_judge'))}): {esc(row.get(f'{final}_answer', ''))}</p></div>"
        for row in answers[:8]
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Alignment report: {esc(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 8px; }} .plots svg {{ width: 520px; height: auto; }}
.sample {{ border-left: 3px solid #88a; padding-left: 10px; margin: 10px 0; }}
</style></head><body>
<h1>Alignment report: {esc(name)}</h1>
<h2>Evaluation on held-out prompts</h2>
<table id="evaluation"><tr><th>metric</th><th>SFT</th><th>{esc(final)}</th></tr>{rows_html}</table>
<p>{esc(method)}</p>
<h2>Training</h2><div class="plots">{"".join(plots)}</div>
<h2>Sample answers, before and after</h2>{samples_html}
</body></html>
"""
    html_path = run_dir / "report.html"
    html_path.write_text(page)
    return html_path, md_path
