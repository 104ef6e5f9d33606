"""The reward-model stage on the tiny model: learning, scoring at the right token, loss, 4-bit, reload."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignment.cli import main
from alignment.config import load_recipe
from alignment.errors import RunStateError
from alignment.models import compute_dtype, load_model, peft_config
from alignment.preferences import SKIP_EMPTY, SKIP_IDENTICAL, Comparison, read_preferences
from alignment.reward import (
    STATS_FILE,
    ComparisonCollator,
    encode_comparison,
    load_reward_model,
    score,
)
from alignment.reward.encoding import EncodedComparison, length_balanced, length_explained
from alignment.reward.scoring import batch_scores, sequence_scores
from alignment.rm import _load_sft_weights, comparison_loss, run_rm
from alignment.sft import run_sft
from alignment.tokens import conversation_ids
from alignment.trainers import hold_out
from tests.conftest import ROOT, write_jsonl

WORDS = [
    *("quick", "brown", "lazy", "answer", "question", "helpful"),
    *("polite", "degrees", "level", "reverse", "step"),
]
TOPICS = ["water", "the fox", "lists in Python", "France", "the dog", "boiling"]


def synthetic_preferences(count: int, seed: int) -> list[dict]:
    """Answers containing the word `marker` are preferred; otherwise alike (same word count).

    Every third row is a 3-way ranking (marked answer best, the other two tied), the rest pairs.
    """
    rng = random.Random(seed)

    def plain(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def marked(n: int) -> str:
        words = plain(n - 1).split()
        words.insert(rng.randint(0, len(words)), "marker")
        return " ".join(words)

    rows = []
    for i in range(count):
        prompt = [
            {"role": "user", "content": f"Tell me about {rng.choice(TOPICS)}, case {seed}-{i}."}
        ]
        n = rng.randint(3, 7)
        if i % 3 == 0:
            rows.append(
                {
                    "prompt": prompt,
                    "completions": [marked(n), plain(n), plain(n)],
                    "ranks": [1, 2, 2],
                }
            )
        else:
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": marked(n)}],
                    "rejected": [{"role": "assistant", "content": plain(n)}],
                }
            )
    return rows


def tiny_rm_recipe(tmp_path: Path, model_dir: Path, data: Path, *extra: str) -> Path:
    recipe = tmp_path / "rm.yaml"
    recipe.write_text(
        f"""name: tiny-rm
run_dir: {tmp_path / "run"}
model:
  name: {model_dir}
lora:
  r: 8
  alpha: 16
rm:
  data: {data}
  init: base
  eval_fraction: 0.1
  max_steps: 40
  batch_size: 8
  max_length: 64
  learning_rate: 3.0e-3
  logging_steps: 10
  eval_steps: 20
  save_steps: 20
  stats_examples: 32
"""
        + "".join(f"{line}\n" for line in extra)
    )
    return recipe


def scoring_model(model_dir: Path) -> AutoModelForSequenceClassification:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval()
    torch.manual_seed(1)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # spread-out scores, so mistakes show
    return model


def test_rm_learns_a_marker_preference_and_reports_it(tmp_path, tiny_model_dir, capsys):
    bad_rows = [
        {"prompt": "Hi", "chosen": "Same answer.", "rejected": "Same answer."},
        {"prompt": "Hi", "chosen": "", "rejected": "An answer."},
    ]
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_preferences(240, seed=1) + bad_rows)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", synthetic_preferences(60, seed=2))
    recipe = tiny_rm_recipe(tmp_path, tiny_model_dir, train)

    main(["rm", str(recipe)])
    out = tmp_path / "run" / "rm"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40
    assert summary["data"]["skipped"] == {SKIP_IDENTICAL: 1, SKIP_EMPTY: 1}
    assert summary["data"]["formats"] == {"rankings": 80, "trl": 162}
    assert summary["train_comparisons"] + summary["eval_comparisons"] == 240
    assert summary["eval_accuracy"] > 0.9

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    assert any(".score." in key for key in load_file(out / "adapter_model.safetensors"))
    stats = json.loads((out / STATS_FILE).read_text())
    assert 32 * 2 <= stats["count"] <= 32 * 3  # every candidate of 32 comparisons
    assert stats["std"] > 0 and stats["max_length"] == 64
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m and "accuracy" in m for m in metrics)
    assert any("eval_accuracy" in m for m in metrics)
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "eval_accuracy" in card and "num_labels=1" in card

    report_path = tmp_path / "report.json"
    main(["eval", "rm", str(out), "--data", str(heldout), "--out", str(report_path)])
    report = json.loads(report_path.read_text())
    assert report["accuracy"] > 0.9
    assert report["pairs"] == 40 + 20 * 2  # tied answers of a ranking form no pair
    assert report["rankings"] == 20 and report["kendall_tau"] > 0.5
    assert sum(b["pairs"] for b in report["by_length"]) == report["pairs"]
    assert sum(b["pairs"] for b in report["by_answer_length"]) == report["pairs"]
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "Accuracy by length" in printed

    # A second run refuses to start over the first one's finished output.
    with pytest.raises(RunStateError, match=r"already holds a finished .* nothing to --resume"):
        run_rm(load_recipe(recipe))


def test_score_reads_the_last_real_token_with_pad_equal_to_eos(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the hard case
    model = scoring_model(tiny_model_dir)
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Paris."}],
        [
            {"role": "system", "content": "Please answer briefly and politely."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris. Thank you!"},
        ],
        "The quick brown fox jumps over the lazy dog.",  # plain text: ends in EOS == pad
        "Water",
    ]
    alone = torch.stack([_score_unpadded(model, tokenizer, c) for c in conversations])
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batched = score(model, tokenizer, conversations)
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    assert alone.unique().numel() == len(conversations)


def _score_unpadded(model, tokenizer, conversation) -> torch.Tensor:
    """The score head at the final token of the sequence alone: no padding, no mask, no index."""
    ids = torch.tensor([conversation_ids(tokenizer, conversation)])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        return model.score(hidden[0, -1]).squeeze()


def test_sequence_scores_use_the_mask_not_the_pad_token(tiny_model_dir):
    model = scoring_model(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = conversation_ids(tokenizer, "The quick brown fox.")  # ends with EOS, which is also pad
    pad = tokenizer.pad_token_id
    right = torch.tensor([[*ids, pad, pad]])
    left = torch.tensor([[pad, pad, *ids]])
    mask_right = torch.tensor([[1] * len(ids) + [0, 0]])
    mask_left = mask_right.flip(-1)
    with torch.no_grad():
        expected = _score_unpadded(model, tokenizer, "The quick brown fox.")
        torch.testing.assert_close(sequence_scores(model, right, mask_right)[0], expected)
        torch.testing.assert_close(sequence_scores(model, left, mask_left)[0], expected)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_grouped_ranking_loss_is_the_mean_of_its_pairwise_losses(tiny_model_dir, share_prefix):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = scoring_model(tiny_model_dir)
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    answers = ["Paris.", "It is Paris, a great city.", "London", "I do not know the answer."]
    ranking = Comparison(
        "rankings.jsonl:1",
        prompt,
        tuple([{"role": "assistant", "content": a}] for a in answers),
        (1, 2, 2, 3),
        ((0, 1), (0, 2), (0, 3), (1, 3), (2, 3)),  # no pair between the tied 2nd and 3rd
    )
    pair = Comparison(
        "pairs.jsonl:1", "Water boils at", (" 100 C.", " 50 C."), (1, 2), ((0, 1),), 0.5
    )
    rows = [encode_comparison(tokenizer, c, 512) for c in (ranking, pair)]
    batch = ComparisonCollator(tokenizer.pad_token_id, share_prefix)(rows)
    with torch.no_grad():
        scores = batch_scores(model, batch)
        loss = comparison_loss(
            scores, batch["better"], batch["worse"], batch["margin"], batch["pair_weight"]
        )

        alone = [
            torch.stack(
                [
                    _score_unpadded(model, tokenizer, c.conversation(k))
                    for k in range(len(c.answers))
                ]
            )
            for c in (ranking, pair)
        ]
    torch.testing.assert_close(scores, torch.cat(alone), rtol=0, atol=1e-5)

    def pairwise(c: Comparison, r: torch.Tensor) -> torch.Tensor:
        return torch.stack([-F.logsigmoid(r[b] - r[w] - c.margin) for b, w in c.pairs])

    # One element per comparison: the ranking's 5 pairs are averaged before the batch mean.
    # From the batch's own scores, so the check is of the loss alone, not of float rounding.
    batched = scores.split([len(ranking.answers), len(pair.answers)])
    expected = (pairwise(ranking, batched[0]).mean() + pairwise(pair, batched[1]).mean()) / 2
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    assert not torch.isclose(
        loss, torch.cat([pairwise(ranking, batched[0]), pairwise(pair, batched[1])]).mean()
    )


def test_truncation_keeps_the_end_of_each_conversation(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_prompt = [{"role": "user", "content": "Please answer briefly and politely. " * 6}]
    answers = ("Paris.", "The capital of France is Paris.")
    comparison = Comparison(
        "f:1",
        long_prompt,
        tuple([{"role": "assistant", "content": a}] for a in answers),
        (1, 2),
        ((0, 1),),
    )
    full = [conversation_ids(tokenizer, comparison.conversation(k)) for k in range(2)]
    row = encode_comparison(tokenizer, comparison, max_length=24)
    candidates = [row.prefix + tail for tail in row.tails]
    assert max(len(c) for c in candidates) == 24
    for candidate, ids in zip(candidates, full, strict=True):
        assert ids[-len(candidate) :] == candidate  # an end of the conversation
    assert full[0][:4] != candidates[0][:4]  # the start went

    # Answers longer than the window: each keeps its own last tokens, nothing is shared.
    row = encode_comparison(tokenizer, comparison, max_length=3)
    assert row.prefix == [] and row.tails == [ids[-3:] for ids in full]


def test_held_out_comparisons_keep_whole_prompts():
    comparisons = [
        Comparison(
            f"f:{i}",
            [{"role": "user", "content": f"prompt {i // 3}"}],
            ("a", "b"),
            (1, 2),
            ((0, 1),),
        )
        for i in range(30)
    ]
    train, held = hold_out(comparisons, 0.2, seed=0)
    assert len(train) + len(held) == 30 and 6 <= len(held) <= 8
    held_prompts = {json.dumps(c.prompt) for c in held}
    assert not held_prompts & {json.dumps(c.prompt) for c in train}


def test_4bit_on_cpu_trains_and_reloads_to_the_same_scores(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_preferences(48, seed=3))
    recipe = tiny_rm_recipe(tmp_path, tiny_model_dir, data)
    outcome = run_rm(
        load_recipe(
            recipe,
            ["model.quantization=4bit", "rm.max_steps=4", "rm.eval_steps=2", "rm.batch_size=4"],
        )
    )
    assert outcome.summary["steps"] == 4
    assert torch.isfinite(torch.tensor(outcome.summary["train_loss"]))
    trainable = {n: p.dtype for n, p in outcome.model.named_parameters() if p.requires_grad}
    # The compute dtype, not TRL's bf16 cast, which breaks a float32 head on CPU.
    dtype = compute_dtype(load_recipe(recipe).model)
    assert any("score" in n for n in trainable) and set(trainable.values()) == {dtype}

    model, tokenizer, stats = load_reward_model(outcome.out_dir)
    assert stats["model"]["quantization"] == "4bit"
    conversations = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": text}]
        for text in ("marker answer", "lazy dog", "The quick brown fox jumps.")
    ]
    before = score(outcome.model, tokenizer, conversations)
    assert torch.equal(score(model, tokenizer, conversations), before)


def test_reload_reproduces_scores_exactly(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_preferences(48, seed=4))
    recipe = tiny_rm_recipe(tmp_path, tiny_model_dir, data)
    outcome = run_rm(load_recipe(recipe, ["rm.max_steps=3", "rm.eval_fraction=0"]))
    model, tokenizer, _ = load_reward_model(outcome.out_dir)
    comparisons = read_preferences(str(data)).comparisons[:6]
    conversations = [c.conversation(k) for c in comparisons for k in range(len(c.answers))]
    assert torch.equal(
        score(model, tokenizer, conversations), score(outcome.model, tokenizer, conversations)
    )
    head = model.get_base_model().score
    trained_head = outcome.model.get_base_model().score
    assert torch.equal(head.weight, trained_head.weight)  # the trained head, not a fresh one


def test_4bit_layers_keep_their_gradient_after_an_evaluation(tiny_model_dir):
    from alignment.config import ModelConfig

    # load_model forbids bitsandbytes' implicit repacking (cpu_4bit.py), which kills this gradient.
    model = load_model(ModelConfig(name=str(tiny_model_dir), quantization="4bit"), head="score")
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(2, 3, layer.in_features, requires_grad=True)
    layer.eval()
    with torch.no_grad():
        layer(x.detach())  # an evaluation, as the Trainer runs one mid-training
    layer.train()
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_rm_starts_from_the_sft_adapter(tmp_path, tiny_model_dir, tiny_recipe):
    sft = run_sft(load_recipe(tiny_recipe, ["sft.max_steps=2", "sft.eval_fraction=0"]))
    recipe = load_recipe(tiny_recipe, ["rm.init=sft"])
    base = load_model(recipe.model, head="score")
    model = get_peft_model(base, peft_config(recipe.lora, TaskType.SEQ_CLS, ["score"]))
    _load_sft_weights(model, sft.out_dir, recipe.lora)
    saved = load_file(sft.out_dir / "adapter_model.safetensors")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(loaded) > 0
    for name, tensor in saved.items():
        key = name.replace(".weight", ".default.weight")
        assert torch.equal(loaded[key].detach(), tensor), name

    other = load_recipe(tiny_recipe, ["lora.r=2", "lora.alpha=4"])
    with pytest.raises(RunStateError, match="shapes must match"):
        _load_sft_weights(model, sft.out_dir, other.lora)


def test_rm_init_sft_without_an_sft_adapter_fails_before_loading(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", synthetic_preferences(6, seed=5))
    recipe = tiny_rm_recipe(tmp_path, tiny_model_dir, data)
    with pytest.raises(RunStateError, match=r"no SFT adapter at .*run/sft.*rm.init=base"):
        run_rm(load_recipe(recipe, ["rm.init=sft"]))


@pytest.mark.slow
def test_hh_recipe_on_real_smollm2_and_human_data(tmp_path):
    shipped = ROOT / "data" / "hh-rlhf-harmless"
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    train.write_text("".join((shipped / "train.jsonl").read_text().splitlines(True)[:16]))
    test.write_text("".join((shipped / "test.jsonl").read_text().splitlines(True)[:8]))
    recipe = load_recipe(
        ROOT / "recipes" / "hh-harmless.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"rm.data={train}",
            f"rm.eval_data={test}",
            "rm.max_steps=2",
            "rm.batch_size=4",
            "rm.max_length=64",
            "rm.stats_examples=2",
        ],
    )
    assert recipe.model.quantization == "4bit"
    outcome = run_rm(recipe)
    assert outcome.summary["steps"] == 2
    assert outcome.summary["data"]["formats"] == {"hh": 16}
    assert 0 <= outcome.summary["eval_accuracy"] <= 1
    model, tokenizer, _ = load_reward_model(outcome.out_dir)
    comparison = read_preferences(str(test)).comparisons[0]
    conversations = [comparison.conversation(0), comparison.conversation(1)]
    # The reloaded adapter runs in the compute dtype it trained in (bf16 where native), so exactly.
    lora_dtype = next(p for n, p in model.named_parameters() if "lora_A" in n).dtype
    assert lora_dtype == compute_dtype(recipe.model)
    torch.testing.assert_close(
        score(model, tokenizer, conversations, max_length=64),
        score(outcome.model, tokenizer, conversations, max_length=64),
        atol=0,
        rtol=0,
    )


def _row(better_len: int, worse_len: int) -> EncodedComparison:
    return EncodedComparison([1], [[2] * better_len, [3] * worse_len], [0], [1], 0.0, 0)


def test_length_balance_makes_length_uninformative_under_the_weights():
    # Shorter preferred in 3 of 4 unequal pairs, plus one pair of equal lengths.
    rows = [_row(2, 5), _row(3, 6), _row(1, 4), _row(7, 2), _row(3, 3)]
    balanced = length_balanced(rows)
    weights = [r.pair_weights[0] for r in balanced]
    assert weights == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0, 1.0])
    assert sum(weights[:3]) == pytest.approx(weights[3])  # shorter and longer weigh the same
    batch = ComparisonCollator(pad_token_id=0)(balanced)
    assert batch["pair_weight"].tolist() == pytest.approx([w / 5 for w in weights])
    assert length_balanced(rows[:3]) == rows[:3]  # one direction only: nothing to balance


def test_length_explained_adds_the_fitted_length_logit_to_each_pair():
    rows = [_row(2, 4), _row(3, 6), _row(1, 2), _row(8, 4), _row(3, 3)]
    explained = length_explained(rows)
    x = np.log2([2 / 4, 3 / 6, 1 / 2, 8 / 4, 1.0])
    offsets = np.array([r.pair_offsets[0] for r in explained])
    coefficient = offsets[0] / x[0]
    np.testing.assert_allclose(offsets, coefficient * x, atol=1e-12)
    # Maximum likelihood: the log-likelihood's derivative, mean(x * sigmoid(-c x)), is zero.
    assert coefficient < 0  # the shorter answer won 3 of 4
    assert np.mean(x / (1 + np.exp(coefficient * x))) == pytest.approx(0, abs=1e-4)
    batch = ComparisonCollator(pad_token_id=0)(explained)
    assert batch["margin"].tolist() == pytest.approx((-offsets).tolist())
    assert length_explained([_row(3, 3)]) == [_row(3, 3)]  # equal lengths: nothing to explain


def test_explained_length_is_not_learned(tmp_path, tiny_model_dir):
    """On pairs where the shorter answer always wins and nothing else differs, a plain reward
    model learns to prefer short answers; with `length_debias: explain` length explains the
    preferences already and the reward model learns (almost) nothing."""
    rng = random.Random(0)
    rows = []
    for i in range(120):
        n = rng.randint(2, 6)
        words = [rng.choice(WORDS) for _ in range(n + 4)]
        rows.append(
            {"prompt": f"Say something, case {i}.", "chosen": " ".join(words[:n]),
             "rejected": " ".join(words)}
        )  # fmt: skip
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    margins = {}
    for debias in ("none", "explain"):
        run = tmp_path / debias
        run.mkdir()
        recipe = tiny_rm_recipe(run, tiny_model_dir, data, f"  length_debias: {debias}")
        summary = run_rm(load_recipe(recipe, ["rm.max_steps=20"])).summary
        margins[debias] = summary["eval_mean_margin"]
    assert margins["none"] > 1.0
    assert abs(margins["explain"]) < 0.2 * margins["none"]


def test_off_topic_answers_train_but_leave_the_reward_statistics_alone(tmp_path, tiny_model_dir):
    rows = synthetic_preferences(40, seed=3)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = tiny_rm_recipe(tmp_path, tiny_model_dir, data, "  off_topic_answers: true")
    overrides = ["rm.max_steps=2", "rm.eval_fraction=0", "rm.stats_examples=0"]
    outcome = run_rm(load_recipe(recipe, overrides))
    assert outcome.summary["train_comparisons"] == 40
    assert outcome.summary["off_topic_pairs"] == 40  # one per ranking
    stats = json.loads((outcome.out_dir / STATS_FILE).read_text())
    # PPO normalises with the scores of the rankings' own answers, not the borrowed ones.
    rankings = read_preferences(str(data)).comparisons
    assert stats["count"] == sum(len(ranking.answers) for ranking in rankings)
