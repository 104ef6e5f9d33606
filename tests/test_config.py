from pathlib import Path

import pytest

from alignment.config import Recipe, load_recipe, save_recipe
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
