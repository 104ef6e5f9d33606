"""PPO with the four roles on one tiny base model."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignment.config import load_recipe
from alignment.errors import DataError, RecipeError, RunStateError, TrainingDiverged
from alignment.models import _Float32Head, float32_logits, load_model, load_tokenizer
from alignment.ppo import build, ppo_update, run_ppo, save_policy
from alignment.reward import load_reward_model, score
from alignment.rlhf.checkpoint import load_checkpoint, save_checkpoint
from alignment.rlhf.roles import RoleModel
from alignment.rlhf.rollout import pack, prompt_indices, truncate_at_stop
from alignment.runs import read_jsonl, start_stage
from alignment.sft import run_sft
from alignment.tokens import last_token_index
from tests.conftest import ROOT, build_tiny_model


def random_reward_adapter(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """A reward adapter in `align rm`'s output format with random (untrained) weights."""
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        task_type=TaskType.SEQ_CLS,
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(out)
    # Built in float32, so it is scored in float32 (the model entry is what `align rm` records).
    model = {"name": str(model_dir), "dtype": "float32"}
    (out / "reward_stats.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "model": model}))
    return out


@pytest.fixture(scope="module")
def ppo_base(tmp_path_factory, tiny_model_dir):
    """A run directory with an SFT adapter and a reward adapter, shared by the tests here."""
    root = tmp_path_factory.mktemp("ppo")
    demos = root / "demos.jsonl"
    demos.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Say {i}"},
                        {"role": "assistant", "content": f"{i}!"},
                    ]
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(
        f"""name: ppo-test
run_dir: {root / "run"}
model: {{name: {tiny_model_dir}, dtype: float32}}  # compared with float32 reference models
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 2, batch_size: 4, eval_fraction: 0}}
ppo:
  prompts: {ROOT / "data" / "prompts.jsonl"}
  updates: 4
  rollout_batch_size: 4
  minibatch_size: 2
  max_new_tokens: 8
  save_every: 2
"""
    )
    recipe = load_recipe(recipe_path)
    run_sft(recipe)
    random_reward_adapter(tiny_model_dir, recipe.output_dir / "rm")
    return recipe_path


def recipe_in(ppo_base: Path, run_dir: Path, *overrides: str):
    """The shared recipe, reading the shared adapters, writing PPO output under `run_dir`."""
    shared = load_recipe(ppo_base).output_dir
    return load_recipe(
        ppo_base,
        [
            f"run_dir={run_dir}",
            f"ppo.sft_adapter={shared / 'sft'}",
            f"ppo.reward_adapter={shared / 'rm'}",
            *overrides,
        ],
    )


def test_roles_share_one_base_and_start_where_they_should(ppo_base, tiny_model_dir):
    recipe = load_recipe(ppo_base)
    run = recipe.output_dir
    roles = RoleModel(load_model(recipe.model), run / "sft", run / "rm", (str(tiny_model_dir),))
    tokenizer = load_tokenizer(recipe.model)
    ids, mask, _ = pack(
        [tokenizer("Say 3")["input_ids"], tokenizer("Hi")["input_ids"]],
        [[5, 6, 7], [8]],
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        with roles.role("policy"):
            policy = roles.logits(ids, mask, keep_last=4)
        with roles.role("reference"):
            reference = roles.logits(ids, mask, keep_last=4)
        torch.testing.assert_close(policy, reference)  # both are the SFT adapter at the start
        sft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), run / "sft"
        )
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        torch.testing.assert_close(
            policy,
            sft_model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -4:],
        )
        rewards = roles.rewards(ids, mask)
        values = roles.values(ids, mask)
        # value starts as a copy of reward: at the last real token they agree
        torch.testing.assert_close(values[torch.arange(2), last_token_index(mask)], rewards)
        # the reward role equals the saved sequence-classification reward model, scored alone
        rm = PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1),
            run / "rm",
        )
        for row in range(2):
            real = ids[row][mask[row].bool()][None]
            torch.testing.assert_close(rm(input_ids=real).logits[0, 0], rewards[row])
    base_params = sum(p.numel() for n, p in roles.peft.named_parameters() if "lora_" not in n)
    assert base_params == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()
    )
    trainable = roles.named_trainable()
    assert trainable and all(
        (".policy." in n or ".value." in n or n == "value_head.weight") for n in trainable
    )
    with roles.role("reference"):
        assert all(
            p.requires_grad for p in trainable.values()
        )  # switching roles never freezes training


def test_ppo_runs_logs_and_saves_a_loadable_policy(ppo_base, tmp_path, tiny_model_dir):
    recipe = recipe_in(ppo_base, tmp_path)
    outcome = run_ppo(recipe)
    history = outcome.history
    assert [h["update"] for h in history] == [1, 2, 3, 4]
    for key in (
        "reward",
        "reward_raw",
        "kl",
        "entropy",
        "policy_loss",
        "value_loss",
        "clip_fraction",
        "approx_kl",
        "explained_variance",
        "answer_length",
        "seconds_generate",
        "seconds_score",
        "seconds_train",
    ):
        assert all(key in h for h in history), key
    assert history[0]["kl"] == 0.0  # policy == reference before the first step
    assert (outcome.out_dir / "samples.jsonl").is_file()
    card = (outcome.out_dir / "README.md").read_text()
    assert "library_name: peft" in card and "ppo" in card

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = PeftModel.from_pretrained(base, outcome.out_dir)
    sft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        load_recipe(ppo_base).output_dir / "sft",
    )
    ids = torch.tensor([[1, 40, 50, 60]])
    with torch.no_grad():
        assert not torch.allclose(policy(ids).logits, sft(ids).logits)  # PPO moved the policy
        merged = policy.merge_and_unload()
        torch.testing.assert_close(
            merged(ids).logits,
            PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(tiny_model_dir), outcome.out_dir
            )(ids).logits,
            atol=1e-5,
            rtol=1e-4,
        )


# bfloat16: the adapters compute in bfloat16 and the optimizer's float32 masters are checkpointed.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resume_after_sigkill_reproduces_the_uninterrupted_run(ppo_base, tmp_path, dtype):
    straight = run_ppo(recipe_in(ppo_base, tmp_path / "straight", f"model.dtype={dtype}")).history

    interrupted = tmp_path / "killed"
    shared = load_recipe(ppo_base).output_dir
    command = [
        sys.executable,
        "-m",
        "alignment.cli",
        "ppo",
        str(ppo_base),
        f"run_dir={interrupted}",
        f"ppo.sft_adapter={shared / 'sft'}",
        f"ppo.reward_adapter={shared / 'rm'}",
        f"model.dtype={dtype}",
    ]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (interrupted / "ppo" / "checkpoints" / "update-2").is_dir():
        assert child.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with pytest.raises(RunStateError, match="pass --resume"):
        run_ppo(recipe_in(ppo_base, interrupted, f"model.dtype={dtype}"))
    resumed = run_ppo(recipe_in(ppo_base, interrupted, f"model.dtype={dtype}"), resume=True).history
    assert [h["update"] for h in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed, strict=True):
        for key in ("reward", "kl", "policy_loss", "value_loss", "answer_length", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["update"], key)


def test_bfloat16_adapters_train_through_float32_masters(ppo_base, tmp_path):
    recipe = recipe_in(ppo_base, tmp_path, "model.dtype=bfloat16")
    out = start_stage(recipe, "ppo")
    parts = build(recipe, Accelerator(cpu=True))
    adapters = {n: p for n, p in parts.model.peft.named_parameters() if "lora_" in n}
    assert {p.dtype for n, p in adapters.items() if ".reward." not in n} == {torch.bfloat16}
    master_weights = parts.learner.masters
    lora = {n: t for n, t in master_weights.model_tensors.items() if "lora_" in n}
    assert lora and all(master_weights.masters[n].dtype == torch.float32 for n in lora)
    before = {n: master_weights.masters[n].clone() for n in lora}

    metrics, _ = ppo_update(parts, 0)
    assert metrics["kl"] == 0.0  # policy and reference are the same bfloat16 weights at first
    masters = master_weights.masters
    assert any(not torch.equal(before[n], masters[n]) for n in lora)  # the optimizer stepped
    for name, tensor in lora.items():
        assert torch.equal(tensor, masters[name].to(torch.bfloat16))  # the model runs the masters
    assert any(not torch.equal(masters[n], t.float()) for n, t in lora.items())  # finer than bf16

    save_policy(parts, out, {})
    saved = load_file(out / "adapter_model.safetensors")
    policy = {n.replace(".policy.", "."): masters[n] for n in lora if ".policy." in n}
    assert saved.keys() == policy.keys()
    for name, tensor in saved.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, policy[name])
    assert all(t.dtype == torch.bfloat16 for t in lora.values())  # saving swapped them back


def test_bad_inputs_fail_before_any_rollout(ppo_base, tmp_path, tiny_model_dir):
    with pytest.raises(RunStateError, match="no sft adapter here"):
        run_ppo(recipe_in(ppo_base, tmp_path / "a", f"ppo.sft_adapter={tmp_path / 'missing'}"))
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(
        json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "word " * 400}) + "\n"
    )
    with pytest.raises(
        DataError,
        match=r"long\.jsonl:2: prompt is \d+ tokens, longer than ppo.max_prompt_length=256",
    ):
        run_ppo(recipe_in(ppo_base, tmp_path / "b", f"ppo.prompts={long_prompt}"))
    other_base = build_tiny_model(tmp_path / "other-base")
    other_rm = random_reward_adapter(other_base, tmp_path / "other-rm")
    with pytest.raises(RunStateError, match=r"trained on .*other-base"):
        run_ppo(recipe_in(ppo_base, tmp_path / "c", f"ppo.reward_adapter={other_rm}"))


def test_rollout_rewards_are_the_reward_models_own_scores(ppo_base, tmp_path):
    """PPO scores each rollout as `align rm` trained and `align eval` scores: the chat template's
    rendering of prompt and answer, unfinished answers closed too (their penalty is separate)."""
    recipe = recipe_in(ppo_base, tmp_path, "ppo.max_new_tokens=6")
    parts = build(recipe, Accelerator(cpu=True))
    batch = [parts.prompts[i] for i in prompt_indices(len(parts.prompts), recipe.seed, 0, 4)]
    rollout, _ = parts.sampler.rollout(batch, 0)
    model, tokenizer, _ = load_reward_model(recipe.ppo.reward_adapter)
    conversations = [
        [*messages, {"role": "assistant", "content": answer}]
        for (messages, _), answer in zip(batch, rollout.answers)
    ]
    torch.testing.assert_close(
        rollout.raw_scores, score(model, tokenizer, conversations), atol=1e-5, rtol=1e-5
    )
    assert not rollout.finished.all()  # 6 new tokens: some answers never ended, yet match

    # The length term: a score loses length_penalty per relative distance from the target.
    sampler, lengths = parts.sampler, rollout.mask.sum(1)
    plain = sampler.shaped(rollout.raw_scores, rollout.finished, lengths)
    torch.testing.assert_close(plain, rollout.scores)
    sampler.cfg = sampler.cfg.model_copy(update={"length_penalty": 0.5, "length_target": 4})
    penalised = sampler.shaped(rollout.raw_scores, rollout.finished, lengths)
    torch.testing.assert_close(plain - penalised, 0.5 * (lengths - 4).abs() / 4)
    with pytest.raises(RecipeError, match="length_penalty needs length_target"):
        recipe_in(ppo_base, tmp_path / "bad", "ppo.length_penalty=0.5")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reusing_the_first_forward_changes_nothing_but_the_work(
    ppo_base, tmp_path, dtype, monkeypatch
):
    """The learner's first micro-batch forward, kept with its gradients, stands in for the no-grad
    pass over its rows: the same behaviour log-probs and entropy exactly (so the first ratio is 1
    and the first KL to the reference 0), the same update as recomputing it, one forward fewer."""
    import alignment.rlhf.learner as learner_module

    forwards = []  # rows of each forward the learner makes
    policy_forward = learner_module.answer_logprobs

    def counted(model, input_ids, *rest):
        forwards.append(len(input_ids))
        return policy_forward(model, input_ids, *rest)

    monkeypatch.setattr(learner_module, "answer_logprobs", counted)
    recipe = recipe_in(ppo_base, tmp_path, f"model.dtype={dtype}")
    results = {}
    for reuse in (True, False):
        parts = build(recipe, Accelerator(cpu=True))
        parts.learner.reuse_first_forward = reuse
        batch = [parts.prompts[i] for i in prompt_indices(len(parts.prompts), recipe.seed, 0, 4)]
        rollout, _ = parts.sampler.rollout(batch, 0)
        first = parts.learner.epoch_orders(0)[0][: parts.learner.micro_batch_size]
        logprobs, entropy = parts.learner.behaviour(rollout, first)
        forwards.clear()
        metrics = parts.learner.update(rollout, 0)
        results[reuse] = (logprobs, entropy, metrics, sum(forwards))
    (reused, reused_entropy, reused_metrics, reused_rows) = results[True]
    (plain, plain_entropy, plain_metrics, plain_rows) = results[False]
    assert torch.equal(reused, plain) and torch.equal(reused_entropy, plain_entropy)
    assert reused_metrics == plain_metrics and reused_metrics["kl"] == 0.0
    assert plain_rows - reused_rows == len(first)  # the first micro-batch's rows, scored once


def ends_at_once_with_a_second_end_token(tiny_model_dir: Path, out: Path) -> tuple[Path, int]:
    """A copy of the tiny model with two end tokens, as Qwen2.5: generation_config.eos_token_id
    is [<|im_end|>, <|endoftext|>] while the tokenizer's eos_token is <|im_end|>. Its weights make
    it answer every prompt with <|endoftext|> at once: every input embedding gets a large first
    coordinate, the final norm reads that coordinate alone, and the (tied) output row of
    <|endoftext|> weighs it twice as much as any other row."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tokenizer.eos_token_id == im_end
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[:, 0] = 10.0
        embeddings[endoftext, 0] = 20.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
    model.generation_config.eos_token_id = [im_end, endoftext]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, endoftext


def test_an_answer_ends_with_the_end_token_the_policy_sampled(tmp_path, tiny_model_dir):
    """Not with the tokenizer's eos_token: PPO would train the policy on a token it never chose."""
    model_dir, endoftext = ends_at_once_with_a_second_end_token(tiny_model_dir, tmp_path / "model")
    sft = tmp_path / "sft"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=TaskType.CAUSAL_LM),
    ).save_pretrained(sft)
    rm = random_reward_adapter(model_dir, tmp_path / "rm")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""name: two-end-tokens
run_dir: {tmp_path / "run"}
model: {{name: {model_dir}, dtype: float32}}
ppo: {{prompts: {ROOT / "data" / "prompts.jsonl"}, sft_adapter: {sft}, reward_adapter: {rm},
      rollout_batch_size: 4, max_new_tokens: 8}}
"""
    )
    parts = build(load_recipe(recipe), Accelerator(cpu=True))
    rollout, _ = parts.sampler.rollout(parts.prompts[:4], 0)
    assert rollout.finished.all() and (rollout.mask.sum(1) == 1).all()
    assert rollout.input_ids[:, -1].tolist() == [endoftext] * 4
    # The token the policy chose: nearly certain under it (the reference is the same SFT model).
    assert (rollout.ref_logprobs.exp() > 0.99).all()


def test_a_tampered_checkpoint_cannot_run_code(ppo_base, tmp_path):
    recipe = recipe_in(ppo_base, tmp_path)
    out = start_stage(recipe, "ppo")
    learner = build(recipe, Accelerator(cpu=True)).learner
    save_checkpoint(out, learner, 1)
    checkpoint = out / "checkpoints" / "update-1"
    assert load_checkpoint(checkpoint, learner) == 1  # what it saved, it loads
    torch.save({"state": Payload(), "param_groups": []}, checkpoint / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(checkpoint, learner)
    assert RAN == []


RAN: list[str] = []


class Payload:
    """Unpickling this calls RAN.append: what a tampered checkpoint could do with os.system."""

    def __reduce__(self):
        return RAN.append, ("code ran",)


def test_stop_strings_truncate_answers(tiny_model_dir):
    tokenizer = load_tokenizer(
        load_recipe(ROOT / "recipes" / "quickstart.yaml", [f"model.name={tiny_model_dir}"]).model
    )
    ids = tokenizer("The answer is 4. Question: what next?", add_special_tokens=False)["input_ids"]
    kept, stopped = truncate_at_stop(tokenizer, ids, ["Question:"])
    assert stopped and tokenizer.decode(kept).startswith("The answer is 4. Question:")
    assert "what" not in tokenizer.decode(kept)
    assert truncate_at_stop(tokenizer, ids, ["User:"]) == (ids, False)


def test_two_process_accelerate_run_completes(ppo_base, tmp_path):
    from tests.test_distributed import launch

    shared = load_recipe(ppo_base).output_dir
    done = launch(
        "ppo", ppo_base, tmp_path,
        f"ppo.sft_adapter={shared / 'sft'}", f"ppo.reward_adapter={shared / 'rm'}", "ppo.updates=2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    history = read_jsonl(tmp_path / "ppo" / "metrics.jsonl")
    assert [h["update"] for h in history] == [1, 2]
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["processes"] == 2  # really two processes, each rolling out its own prompts
    assert (tmp_path / "ppo" / "adapter_model.safetensors").is_file()


def test_nan_reward_stops_with_the_update_and_cause_keeping_the_last_checkpoint(
    ppo_base, tmp_path, tiny_model_dir
):
    from safetensors.torch import load_file, save_file

    broken = random_reward_adapter(tiny_model_dir, tmp_path / "nan-rm")
    weights = load_file(broken / "adapter_model.safetensors")
    weights["base_model.model.score.weight"] = torch.full_like(
        weights["base_model.model.score.weight"], float("nan")
    )
    save_file(weights, broken / "adapter_model.safetensors")
    with pytest.raises(TrainingDiverged, match="update 1: the reward model returned NaN"):
        run_ppo(recipe_in(ppo_base, tmp_path / "run", f"ppo.reward_adapter={broken}"))
    assert not (tmp_path / "run" / "ppo" / "checkpoints").exists()  # nothing half-trained was saved


def test_reward_rises_against_a_trained_marker_reward_while_kl_stays_bounded(
    tmp_path, tiny_model_dir
):
    """SFT answers are 'yes great' or 'no' about equally; a reward model trained to prefer the
    marker word 'great' makes PPO shift the policy towards it, within a KL bound."""
    # At the default init scale a 64-wide model's logits are nearly flat and LoRA barely moves them.
    tiny_model_dir = build_tiny_model(tmp_path / "model", init_range=0.2)
    rows, pairs = [], []
    for i in range(32):
        prompt = [{"role": "user", "content": f"Question {i}?"}]
        for answer in ("yes great", "no"):
            rows.append({"messages": [*prompt, {"role": "assistant", "content": answer}]})
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": "yes great"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            }
        )
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preferences = tmp_path / "pairs.jsonl"
    preferences.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(32, 64))
    )
    recipe_path = tmp_path / "marker.yaml"
    recipe_path.write_text(
        f"""name: marker
run_dir: {tmp_path / "run"}
seed: 1
model: {{name: {tiny_model_dir}}}
lora: {{r: 8, alpha: 16, dropout: 0.0}}
sft: {{data: {demos}, max_steps: 40, batch_size: 8, learning_rate: 5.0e-3, eval_fraction: 0, warmup_ratio: 0}}
rm: {{data: {preferences}, init: base, max_steps: 30, batch_size: 8, learning_rate: 3.0e-3, eval_fraction: 0, max_length: 64}}
ppo:
  prompts: {prompts}
  updates: 16
  rollout_batch_size: 8
  minibatch_size: 4
  ppo_epochs: 2
  learning_rate: 2.0e-3
  max_new_tokens: 6
  kl_coef: 0.1
  unfinished_penalty: 0.0
  save_every: 100
"""
    )
    from alignment.rm import run_rm

    recipe = load_recipe(recipe_path)
    run_sft(recipe)
    run_rm(recipe)
    history = run_ppo(recipe).history
    first = sum(h["reward_raw"] for h in history[:4]) / 4
    last = sum(h["reward_raw"] for h in history[-4:]) / 4
    assert last > first + 0.5, [round(h["reward_raw"], 3) for h in history]
    assert max(h["kl"] for h in history) < 5.0  # nats per 6-token answer


def test_float32_head_matches_a_float32_linear_forward_and_backward(tiny_model_dir, monkeypatch):
    # bf16 body, head upcast block by block: same logits and hidden gradients as a float32 copy.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model.requires_grad_(False)  # a frozen head, as under LoRA
    ids = torch.tensor([[3, 5, 7, 9, 11], [4, 6, 8, 10, 12]])
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, -3:].float()
    hidden.requires_grad_(True)
    weight = model.get_output_embeddings().weight
    grad = torch.randn(2, 3, weight.shape[0])

    logits = float32_logits(model, ids, keep_last=3)
    expected = torch.nn.functional.linear(hidden, weight.float())
    torch.testing.assert_close(logits, expected)

    monkeypatch.setattr(_Float32Head, "BLOCK", 7)  # several blocks, the last one partial
    mine = hidden.detach().requires_grad_(True)
    (_Float32Head.apply(mine, weight) * grad).sum().backward()
    (expected * grad).sum().backward()
    torch.testing.assert_close(mine.grad, hidden.grad)
