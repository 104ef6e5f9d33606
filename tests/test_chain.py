"""`align run`: the whole chain on the tiny model, with the rubric judge ranking."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from alignment.chain import run_chain
from alignment.cli import main
from alignment.config import RubricConfig, load_recipe
from alignment.errors import RecipeError, RunStateError
from alignment.store import AB_EVALUATION, Store
from tests.conftest import ROOT


@pytest.fixture
def chain_recipe(tmp_path, tiny_model_dir, demos_file):
    path = tmp_path / "chain.yaml"
    path.write_text(
        f"""name: chain
run_dir: {tmp_path / "run"}
model: {{name: {tiny_model_dir}}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos_file}, max_steps: 3, batch_size: 4, eval_fraction: 0}}
sample: {{k: 3, max_new_tokens: 8, batch_size: 8}}
chain: {{sample_prompts: {ROOT / "data" / "prompts.jsonl"}, sample_limit: 12}}
judge: {{rubric: {{min_words: 2, max_words: 6}}}}
rm: {{max_steps: 4, batch_size: 4, eval_fraction: 0.25, max_length: 64}}
ppo: {{prompts: {ROOT / "data" / "prompts.jsonl"}, updates: 2, rollout_batch_size: 4, minibatch_size: 2, max_new_tokens: 8}}
eval: {{prompts: {ROOT / "data" / "prompts_heldout.jsonl"}, limit: 4, max_new_tokens: 8, max_kl_to_sft: 1000}}
"""
    )
    return path


def test_whole_chain_runs_skips_finished_stages_redoes_stale_ones_and_reports(chain_recipe):
    recipe = load_recipe(chain_recipe)
    assert run_chain(recipe) == ["sft", "sample", "rank", "rm", "ppo", "eval", "report"]
    run = recipe.output_dir
    store = Store(run / "rankings.db")
    rankings = list(store.current_rankings())
    assert len(rankings) == 12 and {r.annotator for r in rankings} == {"judge:rubric"}
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    win = evaluation["win_rate"]
    assert evaluation["prompts"] == 4 and 0 <= win["low"] <= win["estimate"] <= win["high"] <= 1
    assert evaluation["kl_to_sft"]["low"] >= 0
    assert evaluation["kl_bound"] == {"max": 1000.0, "within": True}  # the recipe's stated bound
    assert evaluation["reward_model"]["gold"] is False  # the run's own RM, named as such
    # The rubric judge's score, criterion by criterion: their weighted means make up the score.
    weights, criteria = RubricConfig().weights, evaluation["judge_criteria"]
    for policy in ("sft", "ppo"):
        weighted = sum(w * criteria[name][policy]["estimate"] for name, w in weights.items())
        assert weighted / sum(weights.values()) == pytest.approx(
            evaluation[policy]["judge_score"]["estimate"]
        )
    html = (run / "report.html").read_text()
    assert f"{evaluation['ppo']['judge_score']['estimate']:.3f} [" in html
    assert html.count("<svg") >= 5
    assert not re.findall(
        r"(?:src|href)=[\"']?(?:https?:)?//", html
    )  # readable offline: nothing fetched
    assert (run / "report.md").is_file()

    # Human A/B evaluation: blind pairs into a store of their own; verdicts come back as a win
    # rate in eval.json and the report.
    main(["eval", str(chain_recipe), "--with", "humans"])
    humans = Store(run / "eval" / "humans.db")
    assert humans.prompts_from(AB_EVALUATION) == 4
    humans.sync_annotators([("ann", "annotator")])
    while (lease := humans.lease("ann")) is not None:
        humans.submit_ranking("ann", lease.token, [1, 2])  # A better, whichever side A is
    main(["eval", str(chain_recipe), "--with", "humans"])
    human = json.loads((run / "eval" / "eval.json").read_text())["human"]
    assert human["judgements"] == 4 and sum(human["verdicts"].values()) == 4
    assert human["per_annotator"]["ann"]["judgements"] == 4
    assert "human win rate of ppo over SFT" in (run / "report.md").read_text()

    # A rerun skips every finished stage; sample and rank find nothing left to do.
    assert run_chain(recipe) == ["sample", "rank", "report"]
    assert len(list(Store(run / "rankings.db").current_rankings())) == 12

    # A reward model trained again leaves PPO and the evaluation out of date: the next run redoes
    # them, keeping their earlier outputs.
    first_policy = (run / "ppo" / "adapter_model.safetensors").read_bytes()
    assert run_chain(recipe, start="sample", until="rm") == ["sample", "rank", "rm"]
    assert run_chain(recipe) == ["sample", "rank", "ppo", "eval", "report"]
    (kept_ppo,) = run.glob("ppo.previous-*")
    assert (kept_ppo / "adapter_model.safetensors").read_bytes() == first_policy
    assert len(list(run.glob("eval.previous-*"))) == 1
    assert run_chain(recipe) == ["sample", "rank", "report"]  # and now all is current


def test_human_eval_of_an_older_evaluation_says_to_rerun_it(chain_recipe, capsys):
    recipe = load_recipe(chain_recipe)
    out = recipe.output_dir / "eval"
    out.mkdir(parents=True)
    (out / "eval.json").write_text(json.dumps({"final_stage": "ppo"}))
    old_row = {"prompt": "Hi?", "sft_answer": "Hello.", "ppo_answer": "Hi."}  # no `messages`
    (out / "answers.jsonl").write_text(json.dumps(old_row) + "\n")
    with pytest.raises(SystemExit):
        main(["eval", str(chain_recipe), "--with", "humans"])
    assert re.search(
        r"answers.jsonl: rows have no `messages`.*--from eval", capsys.readouterr().err
    )
    assert not (out / "humans.db").exists()


def test_from_and_until(chain_recipe):
    recipe = load_recipe(chain_recipe)
    assert run_chain(recipe, until="rank") == ["sft", "sample", "rank"]
    assert not (recipe.output_dir / "rm").exists()
    first_sft = (recipe.output_dir / "sft" / "adapter_model.safetensors").read_bytes()
    assert run_chain(recipe, start="sft", until="sft") == ["sft"]
    assert list(recipe.output_dir.glob("sft.previous-*"))  # the earlier output is kept
    assert (
        recipe.output_dir / "sft" / "adapter_model.safetensors"
    ).read_bytes() == first_sft  # seeded
    with pytest.raises(RecipeError, match="--from dpo: not a stage of this recipe"):
        run_chain(recipe, start="dpo")


def test_human_ranking_stops_after_sampling(chain_recipe, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "run", str(chain_recipe), "chain.rank_with=humans"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 rankings in" in done.stdout and "--from rm" in done.stdout
    assert not (tmp_path / "run" / "rm").exists()


@pytest.fixture
def sft_only(tmp_path, tiny_model_dir, demos_file):
    path = tmp_path / "sft.yaml"
    path.write_text(
        f"""name: sft-only
run_dir: {tmp_path / "run"}
model: {{name: {tiny_model_dir}, dtype: float32}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos_file}, max_steps: 2, batch_size: 4, eval_fraction: 0, logging_steps: 1}}
chain: {{stages: [sft]}}
"""
    )
    return load_recipe(path)


def test_changed_training_data_redoes_the_stage_and_keeps_the_old_one(sft_only, demos_file):
    assert run_chain(sft_only) == ["sft"]
    assert run_chain(sft_only) == []  # finished, data unchanged
    trained = (sft_only.output_dir / "sft" / "summary.json").stat().st_mtime_ns
    os.utime(demos_file, ns=(trained + 1, trained + 1))  # the demonstrations edited since
    assert run_chain(sft_only) == ["sft"]
    (kept,) = sft_only.output_dir.glob("sft.previous-*")
    assert (kept / "adapter_model.safetensors").is_file()
    assert run_chain(sft_only) == []


def test_output_without_a_checkpoint_is_never_trained_over(sft_only):
    assert run_chain(sft_only) == ["sft"]
    sft = sft_only.output_dir / "sft"
    # Finished but for its summary (say, killed while saving), its checkpoints deleted.
    (sft / "summary.json").unlink()
    shutil.rmtree(sft / "checkpoints")
    metrics = (sft / "metrics.jsonl").read_text()
    with pytest.raises(RunStateError, match=r"sft holds the output of an earlier run .*--from sft"):
        run_chain(sft_only)
    assert (sft / "metrics.jsonl").read_text() == metrics  # nothing appended, nothing lost
    assert run_chain(sft_only, start="sft") == ["sft"]
    (kept,) = sft_only.output_dir.glob("sft.previous-*")
    assert (kept / "metrics.jsonl").read_text() == metrics
