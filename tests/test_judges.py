"""Judges rank through the store's public API, exactly like annotators."""

import pytest

from alignment.config import RubricConfig, load_recipe
from alignment.errors import RecipeError
from alignment.export import export_rows
from alignment.judges import (
    judge_store,
    ranks_from_scores,
    rubric_criteria,
    rubric_score,
    rubric_scorer,
)
from alignment.store import NewCandidate, Store
from tests.conftest import ROOT


def test_rubric_criteria_are_transparent():
    rubric = RubricConfig(min_words=4, max_words=10, banned_phrases=["as an ai"])
    good = rubric_criteria(
        rubric, "How long should I boil an egg?", "Boil the egg for nine minutes."
    )
    assert good == {
        "length": 1.0,
        "complete": 1.0,
        "relevance": pytest.approx(2 / 3),
        "no_repetition": 1.0,
        "no_banned_phrases": 1.0,
    }
    bad = rubric_criteria(
        rubric,
        "How long should I boil an egg?",
        "As an AI egg egg egg egg egg egg egg egg egg egg egg egg",
    )
    assert bad["no_banned_phrases"] == 0 and bad["complete"] == 0
    assert bad["length"] == pytest.approx(1 - 5 / 10) and bad["no_repetition"] == pytest.approx(
        4 / 13
    )
    assert rubric_score(rubric, "q", "Short.") == pytest.approx((0.25 + 1 + 1 + 1 + 1) / 5)


def test_rubric_weights_are_validated_in_the_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\njudge:\n  rubric:\n    weights: {lenght: 1}\n")
    with pytest.raises(RecipeError, match=r"judge.rubric.weights: .*unknown criteria \['lenght'\]"):
        load_recipe(path)
    recipe = load_recipe(path, ["judge.rubric.weights={length: 2}"])
    assert recipe.judge.rubric.weights == {
        "length": 2.0,
        "complete": 0.0,
        "relevance": 0.0,
        "no_repetition": 0.0,
        "no_banned_phrases": 0.0,
    }


def test_ranks_from_scores_ties_equal_scores():
    assert ranks_from_scores([0.5, 0.9, 0.5, 0.1]) == [2, 1, 2, 3]


def test_judge_ranks_every_prompt_into_the_store_and_export(tmp_path):
    store = Store(tmp_path / "r.db")
    answers = [
        "Boil the egg for nine minutes.",
        "egg egg egg egg egg egg",
        "Nine minutes in boiling water, then cold water.",
        "Eggs.",
    ]
    for i in range(3):
        prompt = [{"role": "user", "content": f"How long should I boil egg number {i}?"}]
        store.add_sampled(prompt, [NewCandidate(text=a, model="m", settings={}) for a in answers])
    rubric = RubricConfig(min_words=4, max_words=12)
    assert judge_store(store, "rubric", rubric_scorer(rubric)) == 3
    assert judge_store(store, "rubric", rubric_scorer(rubric)) == 0  # nothing left in its queue
    rankings = list(store.current_rankings())
    assert len(rankings) == 3 and {r.annotator for r in rankings} == {"judge:rubric"}
    expected = sorted(
        answers, key=lambda a: -rubric_score(rubric, "How long should I boil egg number 0?", a)
    )
    assert [item.text for item in rankings[0].items] == expected
    pairs = list(export_rows(store, "pairs"))
    assert len(pairs) == 3 * 6 and all(p["annotator"] == "judge:rubric" for p in pairs)


def test_quickstart_judge_is_the_rubric():
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert recipe.judge.kind == "rubric" and recipe.chain.rank_with == "judge"
