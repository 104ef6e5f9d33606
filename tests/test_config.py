from pathlib import Path

import pytest

from alignment.config import DataSource, Recipe, load_recipe, save_recipe
from alignment.errors import RecipeError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_every_section(tmp_path):
    recipe = load_recipe(write(tmp_path, "name: x\n"))
    assert recipe.model.name == "smollm2-135m-instruct"
    assert recipe.model.quantization == "none"
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.sft.assistant_only_loss is True
    assert recipe.output_dir == Path("runs/x")


def test_name_defaults_to_file_stem(tmp_path):
    assert load_recipe(write(tmp_path, "seed: 1\n")).name == "r"


def test_dotted_overrides_are_typed_like_yaml(tmp_path):
    recipe = load_recipe(
        write(tmp_path, "name: x\n"),
        [
            "sft.max_steps=20",
            "model.quantization=4bit",
            "sft.group_by_length=false",
            "lora.target_modules=[q_proj, v_proj]",
        ],
    )
    assert recipe.sft.max_steps == 20
    assert recipe.model.quantization == "4bit"
    assert recipe.sft.group_by_length is False
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "name: x\nsft:\n  max_stepz: 3\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message
    assert "sft.max_stepz: unknown key; did you mean 'max_steps'?" in message
    assert "Allowed here:" in message and "learning_rate" in message


def test_unknown_section_suggests_close_name(tmp_path):
    with pytest.raises(RecipeError, match="modle: unknown key; did you mean 'model'"):
        load_recipe(write(tmp_path, "name: x\nmodle:\n  name: y\n"))


def test_wrong_value_lists_what_is_allowed(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: x\n"), ["model.quantization=3bit"])
    message = str(err.value)
    assert "model.quantization" in message and "'4bit'" in message and "'3bit'" in message
    assert "overrides model.quantization=3bit" in message


def test_wrong_type_is_reported(tmp_path):
    with pytest.raises(RecipeError, match=r"sft.batch_size: .*integer"):
        load_recipe(write(tmp_path, "name: x\nsft:\n  batch_size: many\n"))


def test_bad_override_syntax(tmp_path):
    with pytest.raises(RecipeError, match="expected dotted key=value"):
        load_recipe(write(tmp_path, "name: x\n"), ["sft.max_steps"])
    with pytest.raises(RecipeError, match="name is a value, not a section"):
        load_recipe(write(tmp_path, "name: x\n"), ["name.first=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path, "name: x\n"), ["sft.max_steps=7"])
    save_recipe(recipe, tmp_path / "out" / "recipe.yaml")
    assert load_recipe(tmp_path / "out" / "recipe.yaml") == recipe


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    assert isinstance(load_recipe(path), Recipe)


def test_data_keys_take_a_path_or_a_mapping_checked_like_any_section(tmp_path):
    recipe = load_recipe(
        write(
            tmp_path, "name: x\nsft:\n  data: {path: me/chats, subset: en, split: 'train[:100]'}\n"
        ),
        ["ppo.prompts=data/prompts.jsonl", "rm.eval_data={path: me/prefs, revision: v1}"],
    )
    assert recipe.sft.data == DataSource(path="me/chats", subset="en", split="train[:100]")
    assert recipe.rm.eval_data == DataSource(path="me/prefs", revision="v1")
    assert recipe.ppo.prompts == "data/prompts.jsonl" and recipe.sft.eval_split == "test"
    assert f"{recipe.sft.data}" == "me/chats"  # messages and model cards name it by its path
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "name: x\ndpo:\n  eval_data: {path: me/x, spilt: test}\n"))
    assert (
        "dpo.eval_data.spilt: unknown key; did you mean 'split'? Allowed here: data_files, path, "
        "revision, split, streaming, subset"
    ) in str(err.value)


def test_trainer_args_are_checked_against_trls_own_config_class(tmp_path):
    recipe = load_recipe(
        write(tmp_path, "name: x\n"),
        ["sft.trainer_args={optim: adafactor, packing: true}", "dpo.trainer_args={ld_alpha: 0.5}"],
    )
    assert recipe.sft.trainer_args == {"optim": "adafactor", "packing": True}
    with pytest.raises(RecipeError) as err:
        load_recipe(
            write(
                tmp_path,
                "name: x\nrm:\n  trainer_args: {optm: adafactor, center_rewards_coefficient: 0.01}\n",
            ),
            ["dpo.trainer_args={packing: true}"],  # SFT's option, not DPO's
        )
    message = str(err.value)
    assert (
        "rm.trainer_args.optm: unknown key of TRL's RewardConfig; did you mean 'optim'? "
        "(see `help(trl.RewardConfig)`)" in message
    )
    assert "center_rewards" not in message
    assert "dpo.trainer_args.packing: unknown key of TRL's DPOConfig" in message


def test_trainer_args_reach_trl_but_cannot_change_what_align_sets(tmp_path):
    import trl

    from alignment.trainers import StageStart, trl_config

    out = tmp_path / "run" / "sft"
    start = StageStart(out, out / "checkpoints", None, "base", tokenizer=None)

    def config(*overrides: str) -> trl.SFTConfig:
        recipe = load_recipe(write(tmp_path, "name: x\n"), list(overrides))
        return trl_config(trl.SFTConfig, recipe, recipe.sft, start, evaluate=False, max_length=64)

    args = config("sft.trainer_args={optim: adafactor, max_grad_norm: 0.5}")
    assert (args.optim, args.max_grad_norm, args.max_length) == ("adafactor", 0.5, 64)
    assert args.output_dir == str(out / "checkpoints")
    with pytest.raises(
        RecipeError, match=r"sft.trainer_args: align sets learning_rate, max_length itself"
    ):
        config("sft.trainer_args={learning_rate: 0.1, max_length: 8}")
    with pytest.raises(
        RecipeError, match=r"sft.trainer_args: TRL's SFTConfig refused them: .*nonsense"
    ):
        config("sft.trainer_args={optim: nonsense}")


def test_peft_args_reach_peft_and_dora_trains(tiny_model_dir):
    import torch
    from peft import get_peft_model

    from alignment.models import load_model, peft_config

    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"model.name={tiny_model_dir}",
            "model.quantization=none",
            "lora.peft_args={use_dora: true}",
        ],
    )
    model = get_peft_model(load_model(recipe.model), peft_config(recipe.lora))
    magnitudes = [p for n, p in model.named_parameters() if "lora_magnitude_vector" in n]
    assert magnitudes and all(p.requires_grad for p in magnitudes)  # DoRA's magnitude is trained
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    assert magnitudes[0].grad is not None

    with pytest.raises(
        RecipeError,
        match=r"lora.peft_args.use_dorra: unknown key of peft's LoraConfig; did you mean 'use_dora'",
    ):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["lora.peft_args={use_dorra: true}"])
    with pytest.raises(RecipeError, match=r"lora.peft_args: r: set by the recipe's own keys"):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["lora.peft_args={r: 8}"])
