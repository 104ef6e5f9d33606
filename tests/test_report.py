"""The evaluation summary and the report built from it: intervals, controls, honest labels."""

import json

from alignment.config import RubricConfig
from alignment.evaluate import rubric_breakdown, summarise
from alignment.generation import Completion
from alignment.report import build_report
from alignment.runs import write_json


def _answers(lengths):
    return [Completion("x", [1] * n, 3, "stop") for n in lengths]


def _evaluation(reward_model):
    judged = {"sft": [0.5, 0.6, 0.4, 0.7, 0.5, 0.6], "ppo": [0.7, 0.6, 0.6, 0.9, 0.4, 0.8]}
    rewards = {"sft": [0.0, 0.1, -0.2, 0.3, 0.0, 0.1], "ppo": [0.4, 0.1, 0.2, 0.5, -0.1, 0.3]}
    lengths = {"sft": [20, 22, 18, 30, 25, 21], "ppo": [12, 14, 10, 20, 18, 15]}
    answers = {name: _answers(values) for name, values in lengths.items()}
    lengths = {name: [float(v) for v in values] for name, values in lengths.items()}
    report = summarise(7, "ppo", judged, rewards, lengths, answers, [0.5, 1.0, 0.2, 0.8, 0.1, 0.4])
    report.update(judge="judge:rubric", reward_model=reward_model)
    return report


def test_every_figure_has_its_interval_and_the_win_rates_are_paired():
    report = _evaluation({"adapter": "runs/x/rm", "gold": False})
    assert report["prompts"] == 6
    for figure in ("win_rate", "length_controlled_win_rate", "judge_score_gain", "kl_to_sft"):
        interval = report[figure]
        assert interval["low"] <= interval["estimate"] <= interval["high"], figure
    assert report["win_rate"]["estimate"] == (4 + 0.5) / 6  # 4 wins, 1 tie, 1 loss
    assert report["ppo"]["answer_tokens"]["estimate"] == 89 / 6
    assert report["reward_win_rate"]["estimate"] == (4 + 0.5) / 6
    assert "logistic" in report["length_control"]


def test_report_shows_intervals_and_calls_the_runs_own_rm_what_it_is(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    write_json(run / "eval" / "eval.json", _evaluation({"adapter": str(run / "rm"), "gold": False}))
    html_path, md_path = build_report(run)
    html, md = html_path.read_text(), md_path.read_text()
    win = json.loads((run / "eval" / "eval.json").read_text())["win_rate"]
    assert f"{win['estimate']:.3f} [{win['low']:.3f}, {win['high']:.3f}]" in md
    assert "win rate at equal answer length" in md and "bootstrap" in md
    assert "gold" not in md.replace("not gold", "")  # the optimised RM is never called gold
    assert "the one PPO optimised" in md
    assert html.count("<svg") == 1  # the win-rate plot with error bars

    write_json(run / "eval" / "eval.json", _evaluation({"adapter": "/rms/gold-rm", "gold": True}))
    _, md_path = build_report(run)
    assert "gold reward (independent RM gold-rm)" in md_path.read_text()


def test_win_rate_where_sft_ends_leaves_out_the_answers_sft_did_not_finish():
    # The policy wins the two prompts where SFT ran out of tokens and loses one of the others.
    judged = {"sft": [0.2, 0.3, 0.6, 0.6, 0.5], "ppo": [0.8, 0.9, 0.5, 0.7, 0.5]}
    lengths = {"sft": [64.0, 64.0, 20.0, 25.0, 30.0], "ppo": [15.0, 18.0, 20.0, 25.0, 30.0]}
    answers = {
        "sft": [Completion("x", [1], 3, "length" if n == 64 else "stop") for n in lengths["sft"]],
        "ppo": _answers([15, 18, 20, 25, 30]),
    }
    report = summarise(0, "ppo", judged, {}, lengths, answers, [1.0] * 5)
    assert report["win_rate"]["estimate"] == (3 + 0.5) / 5
    assert report["prompts_where_sft_ends"] == 3
    assert report["win_rate_where_sft_ends"]["estimate"] == (1 + 0.5) / 3


def test_rubric_breakdown_names_the_criterion_a_win_comes_from(tmp_path):
    # Both answers end and are of the same length; only the policy's names what was asked about.
    prompts = [("p", [{"role": "user", "content": "How do I water tomato plants in summer?"}])]
    answers = {
        "sft": [Completion("You could ask a friend who knows about this.", [1] * 9, 3, "stop")],
        "ppo": [
            Completion("Water tomato plants deeply each morning in summer.", [1] * 9, 3, "stop")
        ],
    }
    breakdown = rubric_breakdown(0, "ppo", RubricConfig(min_words=3), prompts, answers)
    assert set(breakdown) == {
        "length",
        "complete",
        "relevance",
        "no_repetition",
        "no_banned_phrases",
    }
    assert breakdown["relevance"]["sft"]["estimate"] == 0.0
    assert breakdown["relevance"]["ppo"]["estimate"] == 1.0  # water, tomato, plants, summer
    assert breakdown["relevance"]["gain"]["estimate"] == 1.0
    assert breakdown["complete"]["gain"]["estimate"] == 0.0

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    evaluation = _evaluation({"adapter": str(run / "rm"), "gold": False})
    evaluation["judge_criteria"] = breakdown
    write_json(run / "eval" / "eval.json", evaluation)
    _, md_path = build_report(run)
    assert "| judge criterion: relevance | 0.000 [0.000, 0.000] | 1.000 [1.000, 1.000] |" in (
        md_path.read_text()
    )
