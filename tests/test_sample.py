"""Batched generation and `align sample`, on the tiny random Llama (real model, real tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import text

from alignment.cli import main
from alignment.generation import (
    GenerationSettings,
    _pick,
    filter_logits,
    generate,
    stop_token_ids,
)
from alignment.store import Store
from alignment.tokens import encode_prompt
from tests.conftest import write_jsonl

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is the capital of France? Please answer briefly."}],
    [
        {"role": "system", "content": "Answer politely."},
        {"role": "user", "content": "To reverse a list in Python, what do I call?"},
    ],
    [{"role": "user", "content": "Water boils at what temperature at sea level, in Celsius?"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from alignment.config import ModelConfig
    from alignment.models import load_model, load_tokenizer

    config = ModelConfig(name=str(tiny_model_dir))
    return load_model(config), load_tokenizer(config)


def test_greedy_batched_matches_one_at_a_time_and_hf_generate(tiny) -> None:
    model, tokenizer = tiny
    greedy = GenerationSettings(max_new_tokens=12, temperature=0, batch_size=4)
    batched = generate(model, tokenizer, PROMPTS, greedy)
    single = [generate(model, tokenizer, [p], greedy)[0] for p in PROMPTS]
    # Left padding, the attention mask and position ids leave every row's result unchanged.
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    for prompt, completion in zip(PROMPTS, batched, strict=True):
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        reference = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=12,
            pad_token_id=tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
        stops = stop_token_ids(model, tokenizer)
        expected = [t for t in reference if t not in stops]
        assert completion.token_ids == expected[: len(completion.token_ids)]
        assert completion.token_ids == reference[: completion.num_tokens]
        assert completion.prompt_tokens == ids.shape[1]
        assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)


def test_each_row_stops_at_its_own_end_of_sequence(tiny) -> None:
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    calls = {"n": 0}

    def force_eos_for_row_zero(module, args, output):
        # Third forward pass (the second generated token): row 0 must pick EOS.
        calls["n"] += 1
        if calls["n"] == 3:
            output = output.clone()
            output[0, -1, eos] = 1e4
        return output

    handle = model.lm_head.register_forward_hook(force_eos_for_row_zero)
    try:
        settings = GenerationSettings(max_new_tokens=6, temperature=0, batch_size=8)
        same = [PROMPTS[1]] * 3
        results = generate(model, tokenizer, same, settings)
    finally:
        handle.remove()
    assert (results[0].num_tokens, results[0].finish_reason) == (2, "stop")
    assert results[0].stop_token == eos
    assert [r.finish_reason for r in results[1:]] == ["length", "length"]
    assert [r.num_tokens for r in results[1:]] == [6, 6]
    assert results[1].token_ids[:2] == results[0].token_ids  # same prompt, same greedy start


def test_sampling_is_reproducible_per_seed_whatever_the_batch(tiny) -> None:
    model, tokenizer = tiny
    settings = GenerationSettings(max_new_tokens=10, temperature=1.0, top_p=0.95, batch_size=4)
    seeds = [11, 22, 33, 44]
    first = generate(model, tokenizer, PROMPTS, settings, seeds)
    again = generate(model, tokenizer, PROMPTS, settings, seeds)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    alone = generate(model, tokenizer, [PROMPTS[2]], settings, [33])[0]
    assert alone.token_ids == first[2].token_ids  # the seed, not the batch, decides
    other = generate(model, tokenizer, PROMPTS, settings, [1, 2, 3, 4])
    assert [c.token_ids for c in other] != [c.token_ids for c in first]
    # top_k=1 is greedy whatever the temperature.
    top1 = GenerationSettings(max_new_tokens=10, temperature=1.5, top_k=1)
    greedy = GenerationSettings(max_new_tokens=10, temperature=0)
    assert [c.token_ids for c in generate(model, tokenizer, PROMPTS, top1, seeds)] == [
        c.token_ids for c in generate(model, tokenizer, PROMPTS, greedy)
    ]


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: (out > float("-inf")).tolist()[0]  # noqa: E731
    assert kept(filter_logits(logits, 1.0, top_k=2, top_p=1.0)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, top_k=0, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, 1.0, top_k=0, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, 1.0, top_k=0, top_p=0.1)) == [True, False, False, False]
    shuffled = logits[:, [2, 0, 3, 1]]  # the nucleus follows probability, not position
    assert kept(filter_logits(shuffled, 1.0, top_k=0, top_p=0.8)) == [False, True, False, True]
    scaled = filter_logits(logits, 2.0, top_k=0, top_p=1.0)
    assert torch.allclose(scaled, logits / 2)


def test_sampling_draws_tokens_at_their_probabilities_and_never_a_masked_one() -> None:
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logits = torch.log(probs).expand(2, -1)  # -inf where the probability is 0
    settings = GenerationSettings(temperature=1.0, top_k=3, top_p=1.0)
    generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    draws = torch.stack([_pick(logits, settings, generators) for _ in range(4000)])
    counts = torch.bincount(draws.flatten(), minlength=len(probs)).float() / draws.numel()
    expected = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.0, 0.0]) / 0.95  # the top 3, renormalised
    assert counts[[0, 2, 5, 6]].sum() == 0  # zero probability, or outside the top 3
    torch.testing.assert_close(counts, expected, atol=0.02, rtol=0)
    again = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
    assert torch.equal(draws[0], _pick(logits, settings, again))  # each row's own stream


# -- align sample ----------------------------------------------------------------------------


@pytest.fixture
def recipe(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"name: tiny\nrun_dir: {tmp_path / 'run'}\nseed: 7\nmodel:\n  name: {tiny_model_dir}\n"
        "sample:\n  max_new_tokens: 8\n  batch_size: 6\n"
    )
    return path


def prompts_file(path: Path, count: int) -> Path:
    return write_jsonl(
        path, [{"prompt": f"Question {i}: what is {i} plus {i}?"} for i in range(count)]
    )


def candidates(db: Path) -> list[dict]:
    with Store(db).database.read() as conn:
        rows = conn.execute(
            text(
                "SELECT p.source, c.* FROM candidates c JOIN prompts p ON p.id = c.prompt_id "
                "ORDER BY c.prompt_id, c.position"
            )
        )
        return [dict(row._mapping) for row in rows]


def test_align_sample_stores_k_candidates_with_their_provenance_and_resumes(
    recipe: Path, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts, db = prompts_file(tmp_path / "prompts.jsonl", 3), tmp_path / "rankings.db"
    main(["sample", str(recipe), "--prompts", str(prompts), "--k", "3", "--db", str(db),
          "sample.temperature=0.9"])  # fmt: skip
    assert (
        "sampled 3 prompts (9 candidates); 0 of 3 already had candidates" in capsys.readouterr().out
    )
    rows = candidates(db)
    assert len(rows) == 9
    assert [r["source"] for r in rows[::3]] == [f"{prompts}:{n}" for n in (1, 2, 3)]
    assert {r["model"] for r in rows} == {str(tiny_model_dir)}
    assert {r["adapter"] for r in rows} == {None}
    assert {r["settings"] for r in rows} == {
        json.dumps({"max_new_tokens": 8, "temperature": 0.9, "top_k": 0, "top_p": 0.95})
    }
    assert len({r["seed"] for r in rows}) == 9
    assert all(0 < r["num_tokens"] <= 8 and r["finish_reason"] in ("stop", "length") for r in rows)

    # Run again with two more prompts: only the new ones are sampled, the old rows untouched.
    prompts_file(prompts, 5)
    main(["sample", str(recipe), "--prompts", str(prompts), "--k", "3", "--db", str(db),
          "sample.temperature=0.9"])  # fmt: skip
    assert (
        "sampled 2 prompts (6 candidates); 3 of 5 already had candidates" in capsys.readouterr().out
    )
    after = candidates(db)
    assert after[:9] == rows and len(after) == 15

    # A fresh database with the same seed gets the same answers: the seeds are reproducible.
    fresh = tmp_path / "fresh.db"
    main(["sample", str(recipe), "--prompts", str(prompts), "--k", "3", "--db", str(fresh),
          "sample.temperature=0.9"])  # fmt: skip
    assert [r["text"] for r in candidates(fresh)] == [r["text"] for r in after]


def test_align_sample_with_an_adapter(recipe: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "sft-adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(adapter)
    prompts, db = prompts_file(tmp_path / "prompts.jsonl", 2), tmp_path / "rankings.db"
    main(["sample", str(recipe), "--prompts", str(prompts), "--k", "2", "--db", str(db),
          "--adapter", str(adapter)])  # fmt: skip
    assert {r["adapter"] for r in candidates(db)} == {str(adapter.resolve())}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"prompt": "ok"}\n{"prompt": "broken\n', "prompts.jsonl:2: invalid JSON"),
        ('{"prompt": "ok"}\n{"question": "x"}\n', "prompts.jsonl:2: expected a `prompt`"),
        (
            '{"messages": [{"role": "assistant", "content": "hi"}]}\n',
            "prompts.jsonl:1: a prompt must end with a user message",
        ),
        ("", "prompts.jsonl: file is empty"),
    ],
)
def test_bad_prompts_file_names_file_and_line(
    recipe: Path, tmp_path: Path, lines: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(lines)
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(recipe), "--prompts", str(prompts), "--db", str(tmp_path / "r.db")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_refuses_long_prompts_and_bad_adapters(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "short"}, {"prompt": "word " * 300}])
    db = str(tmp_path / "r.db")
    with pytest.raises(SystemExit):
        main(["sample", str(recipe), "--prompts", str(prompts), "--db", db,
              "sample.max_prompt_tokens=64"])  # fmt: skip
    assert "p.jsonl:2: prompt is" in capsys.readouterr().err
    assert Store(db).counts()["candidates"] == 0  # refused before sampling anything
    with pytest.raises(SystemExit):
        main(["sample", str(recipe), "--prompts", str(prompts), "--db", db,
              "--adapter", str(tmp_path)])  # fmt: skip
    assert "not a PEFT adapter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(recipe), "--prompts", str(prompts), "--db", db, "--k", "1"])
    assert "--k 1" in capsys.readouterr().err
