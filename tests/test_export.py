"""Export of the stored rankings (rankings and pairs, mean-rank aggregation, files) and the
`align export` and `align agreement` commands."""

from __future__ import annotations

import json
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
