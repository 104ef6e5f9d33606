"""Export of the stored rankings (rankings and pairs, mean-rank aggregation, files) and the
`align export` and `align agreement` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.errors import DataError
from alignment.export import export, export_rows
from alignment.store import Store
from tests.ranking_support import pair, ranked_store, user_prompt


@pytest.fixture
def ranked(tmp_path: Path) -> Store:
    return ranked_store(tmp_path / "rankings.db")


def ranking_row(
    ranking: int, prompt_id: int, completions: list[str], ranks: list[int], who: str
) -> dict:
    """A `rankings` export row of the `ranked` store, whose prompt N reads "pN"."""
    return {
        "ranking_id": ranking,
        "prompt_id": prompt_id,
        "prompt": user_prompt(f"p{prompt_id}"),
        "completions": completions,
        "ranks": ranks,
        "annotator": who,
    }


def test_export_rankings_rows_exactly(ranked: Store) -> None:
    rows = list(export_rows(ranked, "rankings"))
    assert rows == [
        ranking_row(1, 1, ["a0", "a1", "a2", "a3"], [1, 2, 2, 3], "alice"),
        ranking_row(2, 1, ["a1", "a0", "a2", "a3"], [1, 2, 3, 4], "bob"),
        ranking_row(3, 2, ["b3", "b2", "b1", "b0"], [1, 2, 3, 4], "alice"),
    ]
    assert [r["ranking_id"] for r in export_rows(ranked, "rankings", min_annotators=2)] == [1, 2]


def test_export_pairs_leave_ties_out_unless_asked(ranked: Store) -> None:
    rows = list(export_rows(ranked, "pairs", min_annotators=2))
    assert rows[:5] == [
        pair("p1", "a0", "a1", 1, "alice"),
        pair("p1", "a0", "a2", 1, "alice"),
        pair("p1", "a0", "a3", 1, "alice"),
        pair("p1", "a1", "a3", 1, "alice"),
        pair("p1", "a2", "a3", 1, "alice"),
    ]
    assert len(rows) == 5 + 6  # alice's tie drops one of six pairs; bob's six all count
    with_ties = list(export_rows(ranked, "pairs", min_annotators=2, include_ties=True))
    assert len(with_ties) == 12
    assert with_ties[3] == pair("p1", "a1", "a2", 1, "alice", tie=True)
    assert with_ties[0] == pair("p1", "a0", "a1", 1, "alice", tie=False)


def test_mean_rank_aggregation(ranked: Store) -> None:
    rows = list(export_rows(ranked, "rankings", aggregate="mean-rank"))
    # a0: (1+2)/2, a1: (2+1)/2 -> tied at 1.5; a2: (2+3)/2; a3: (3+4)/2.
    assert rows[0] == ranking_row(1, 1, ["a0", "a1", "a2", "a3"], [1, 1, 2, 3], "alice+bob")
    assert rows[1]["annotator"] == "alice" and rows[1]["ranks"] == [1, 2, 3, 4]
    pairs = list(export_rows(ranked, "pairs", aggregate="mean-rank", min_annotators=2))
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("a0", "a2"),
        ("a0", "a3"),
        ("a1", "a2"),
        ("a1", "a3"),
        ("a2", "a3"),
    ]


def test_export_files_jsonl_and_datasets(ranked: Store, tmp_path: Path) -> None:
    out = tmp_path / "out" / "pairs.jsonl"
    result = export(ranked, "pairs", out, save_to_disk=tmp_path / "hf")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert result.rows == len(lines) == 17  # 5 + 6 from prompt 1, 6 from prompt 2
    assert json.loads(lines[0]) == pair("p1", "a0", "a1", 1, "alice")
    import datasets

    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded.num_rows == 17 and loaded[0]["chosen"] == [{"role": "assistant", "content": "a0"}]
    with pytest.raises(DataError, match="nothing to write"):
        export(ranked, "pairs", None)
    with pytest.raises(DataError, match="--min-annotators 0"):
        export(ranked, "pairs", out, min_annotators=0)


def test_export_and_agreement_cli(
    ranked: Store, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from alignment.cli import main

    out = tmp_path / "rankings.jsonl"
    main(
        [
            "export",
            "--db",
            str(ranked.path),
            "--format",
            "rankings",
            "--out",
            str(out),
            "--min-annotators",
            "2",
        ]
    )
    assert [json.loads(line)["ranking_id"] for line in out.read_text().splitlines()] == [1, 2]
    main(["agreement", "--db", str(ranked.path), "--json"])
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["prompts_compared"] == 1 and report["annotator_pairs"] == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--db", str(tmp_path / "missing.db"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "missing.db: ranking database not found" in capsys.readouterr().err


def test_export_hf_is_a_dataset_trl_trains_on(
    ranked: Store, tmp_path: Path, tiny_model_dir: Path
) -> None:
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    result = export(ranked, "hf", tmp_path / "prefs", min_annotators=2)
    assert (result.rows, result.dataset_dir, result.out) == (11, tmp_path / "prefs", None)
    loaded = datasets.load_from_disk(str(tmp_path / "prefs"))
    assert loaded[0] == {**pair("p1", "a0", "a1", 1, "alice"), "chosen_rank": 1, "rejected_rank": 2}
    assert [row["ranking_id"] for row in loaded] == [1] * 5 + [2] * 6
    # TRL's reward and DPO trainers take it as it is, one real step each.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    settings = {"max_steps": 1, "per_device_train_batch_size": 4, "report_to": [], "use_cpu": True}
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    reward = RewardTrainer(
        model=reward_model,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), save_strategy="no", **settings),
        train_dataset=loaded,
        processing_class=tokenizer,
    )
    assert reward.train().global_step == 1
    dpo = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), save_strategy="no", **settings),
        train_dataset=loaded,
        processing_class=tokenizer,
    )
    assert dpo.train().global_step == 1


def test_export_hf_keeps_its_columns_and_refuses_what_it_cannot_do(
    ranked: Store, tmp_path: Path
) -> None:
    import datasets

    export(ranked, "hf", tmp_path / "none", min_annotators=3, include_ties=True)
    empty = datasets.load_from_disk(str(tmp_path / "none"))
    assert empty.num_rows == 0 and "chosen_rank" in empty.column_names and "tie" in empty.features
    with pytest.raises(DataError, match="none: already exists; export to a new directory"):
        export(ranked, "hf", tmp_path / "none")
    with pytest.raises(DataError, match="drop --save-to-disk"):
        export(ranked, "hf", tmp_path / "a", save_to_disk=tmp_path / "b")
    with pytest.raises(DataError, match="--push-to-hub goes with --format hf"):
        export(ranked, "pairs", tmp_path / "p.jsonl", push_to_hub="me/prefs")
    with pytest.raises(DataError, match="expected owner/name"):
        export(ranked, "hf", None, push_to_hub="not a repo")
    written = [p.name for p in tmp_path.iterdir() if not p.name.startswith("rankings.db")]
    assert written == ["none"]


def test_push_to_hub_is_refused_offline_before_anything_is_written(
    ranked: Store, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "alignment.cli", "export", "--db", str(ranked.path)]
    command += ["--format", "hf", "--out", str(tmp_path / "prefs"), "--push-to-hub", "me/prefs"]
    done = subprocess.run(
        command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --push-to-hub me/prefs: the Hugging Face Hub is offline (HF_HUB_OFFLINE is set), "
        "so nothing was written or uploaded. Write the dataset with --out DIR and push it later "
        "from a machine that is online, or unset HF_HUB_OFFLINE."
    )
    assert not (tmp_path / "prefs").exists()
