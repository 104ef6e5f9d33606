"""`align run`: the recipe's stages in order, each reading the previous stage's output.

    sft → sample → rank → rm → ppo (or dpo) → eval → report

Finished stages are skipped, so a rerun resumes where the last one stopped (a stage that was
interrupted resumes from its checkpoint). A stage whose inputs (its data, the adapters it starts
from, the run's rankings) changed after its output was made is out of date: it is redone, its
earlier output moved aside. `--from STAGE` runs that stage and the ones after it again; their
earlier outputs are moved aside too, never deleted. `--until STAGE` stops after it. A trained
stage holding an earlier attempt's output but no checkpoint is never retrained over it: the
chain stops and says how to redo it. With `chain.rank_with: humans` the chain stops after
sampling until enough rankings are in.
"""

from __future__ import annotations

import filecmp
import logging
import shutil
import time
from pathlib import Path

from alignment.config import Recipe
from alignment.errors import RecipeError, RunStateError
from alignment.runs import end_stage

log = logging.getLogger(__name__)
TRAINED = ("sft", "rm", "ppo", "dpo")  # stages whose output is an adapter directory
WEIGHTS = "adapter_model.safetensors"  # what a later stage starts from in an adapter directory
# Stages that train on the run's rankings: the export format and the file it is written to.
EXPORTS = {"rm": ("rankings", "comparisons.jsonl"), "dpo": ("pairs", "pairs.jsonl")}


def rankings_db(recipe: Recipe) -> Path:
    return recipe.output_dir / "rankings.db"


def is_finished(recipe: Recipe, stage: str) -> bool:
    run = recipe.output_dir
    if stage in TRAINED:
        return (run / stage / "summary.json").is_file() and (
            run / stage / "adapter_config.json"
        ).is_file()
    if stage == "eval":
        return (run / "eval" / "eval.json").is_file()
    return False  # sample, rank and report are incremental or cheap: they always run


def _input_files(recipe: Recipe, stage: str) -> list[Path]:
    """The local files a stage reads: its data, the adapters it starts from, the run's export."""
    run = recipe.output_dir

    def adapter(directory: str | Path | None, default: str) -> Path:
        return Path(directory or run / default) / WEIGHTS

    inputs: list[str | Path | None] = []
    if stage == "sft":
        inputs = [recipe.sft.data, recipe.sft.eval_data]
    elif stage == "rm":
        inputs = [run / EXPORTS["rm"][1], recipe.rm.eval_data]
        if recipe.rm.init == "sft":
            inputs.append(adapter(None, "sft"))
    elif stage == "dpo":
        dpo = recipe.dpo
        inputs = [run / EXPORTS["dpo"][1], dpo.eval_data, adapter(dpo.sft_adapter, "sft")]
    elif stage == "ppo":
        ppo = recipe.ppo
        inputs = [ppo.prompts, adapter(ppo.sft_adapter, "sft"), adapter(ppo.reward_adapter, "rm")]
    elif stage == "eval":
        policies = [adapter(None, s) for s in TRAINED if s in recipe.chain.stages]
        inputs = [recipe.eval.prompts, adapter(recipe.eval.gold_reward_adapter, "rm"), *policies]
    paths = [Path(str(p)) for p in inputs if p is not None]  # str: a DataSource names its path
    return [path for path in paths if path.is_file()]  # Hub ids: no files


def _checkpoints(recipe: Recipe, stage: str) -> list[Path]:
    # Hidden entries are checkpoints still being written (e.g. `.update-3.partial`).
    found = (recipe.output_dir / stage / "checkpoints").glob("*")
    return [path for path in found if not path.name.startswith(".")]


def _output_time(recipe: Recipe, stage: str) -> int | None:
    """When the stage's output was made (ns): its finished output, or for an interrupted stage
    its earliest checkpoint; None when it has neither."""
    if is_finished(recipe, stage):
        marker = "eval/eval.json" if stage == "eval" else f"{stage}/summary.json"
        return (recipe.output_dir / marker).stat().st_mtime_ns
    return min((path.stat().st_mtime_ns for path in _checkpoints(recipe, stage)), default=None)


def changed_inputs(recipe: Recipe, stage: str) -> list[Path]:
    """The stage's inputs that changed after its output (finished or checkpointed) was made."""
    made = _output_time(recipe, stage)
    if made is None:
        return []
    return [path for path in _input_files(recipe, stage) if path.stat().st_mtime_ns > made]


def _move_aside(path: Path) -> None:
    if not path.exists():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.previous-{stamp}")
    copies = 1
    while target.exists():  # moved aside twice within a second: keep both
        copies += 1
        target = path.with_name(f"{path.name}.previous-{stamp}-{copies}")
    log.info("moving earlier output %s to %s", path, target)
    shutil.move(path, target)


def _refuse_overwriting(recipe: Recipe, stage: str) -> None:
    """A trained stage that is neither finished nor resumable but holds an earlier attempt's
    output (metrics, adapter, summary) would be retrained over it: stop and say what to do."""
    directory = recipe.output_dir / stage
    if stage not in TRAINED or not directory.is_dir() or _checkpoints(recipe, stage):
        return
    earlier = sorted(
        path.name for path in directory.iterdir() if path.name not in ("train.log", "checkpoints")
    )
    if earlier:
        raise RunStateError(
            f"{directory} holds the output of an earlier run ({', '.join(earlier)}) but no "
            f"checkpoint to resume from; redo the stage with `align run <recipe> --from {stage}` "
            f"(that output is moved to {stage}.previous-<time>) or set run_dir=<new dir>"
        )


def _selected(recipe: Recipe, start: str | None, until: str | None) -> list[str]:
    stages = list(recipe.chain.stages)
    for flag, stage in (("--from", start), ("--until", until)):
        if stage is not None and stage not in stages:
            raise RecipeError(
                f"{flag} {stage}: not a stage of this recipe; chain.stages is {stages}"
            )
    first = stages.index(start) if start else 0
    last = stages.index(until) if until else len(stages) - 1
    return stages[first : last + 1]


def run_chain(recipe: Recipe, start: str | None = None, until: str | None = None) -> list[str]:
    """Run the selected stages; returns the ones that ran (skipped ones are logged)."""
    ran = []
    for stage in _selected(recipe, start, until):
        if stage in EXPORTS:
            _export(recipe, stage)  # first: rankings added since the stage ran make it stale
        if start is not None:
            # Everything from --from on is redone; keep what was there.
            _move_aside(recipe.output_dir / stage)
        elif changed := changed_inputs(recipe, stage):
            log.info(
                "stage %s: redoing it, since %s changed after its output was made",
                stage,
                ", ".join(map(str, changed)),
            )
            _move_aside(recipe.output_dir / stage)
        elif is_finished(recipe, stage):
            log.info("stage %s: finished earlier, skipping", stage)
            continue
        else:
            _refuse_overwriting(recipe, stage)
        log.info("stage %s: starting", stage)
        try:
            carry_on = _run_stage(recipe, stage)
        finally:
            end_stage()  # its train.log and trackers take nothing of the next stage's
        if not carry_on:
            break
        ran.append(stage)
    return ran


def _run_stage(recipe: Recipe, stage: str) -> bool:
    """Run one stage; False means the chain stops here (waiting for human rankings)."""
    run = recipe.output_dir
    resume = bool(_checkpoints(recipe, stage))
    if stage == "sft":
        from alignment.sft import run_sft

        run_sft(recipe, resume=resume)
    elif stage == "sample":
        from alignment.sample import run_sample

        run_sample(
            recipe,
            recipe.chain.sample_prompts,
            rankings_db(recipe),
            adapter=run / "sft",
            limit=recipe.chain.sample_limit,
        )
    elif stage == "rank":
        return _rank(recipe)
    elif stage == "rm":
        from alignment.rm import run_rm

        run_rm(_reading(recipe, "rm"), resume)
    elif stage == "ppo":
        from alignment.ppo import run_ppo

        run_ppo(recipe, resume=resume)
    elif stage == "dpo":
        from alignment.dpo import run_dpo

        run_dpo(_reading(recipe, "dpo"), resume)
    elif stage == "eval":
        from alignment.evaluate import run_eval

        run_eval(recipe)
    elif stage == "report":
        from alignment.report import build_report

        html, _ = build_report(run)
        log.info("report: %s", html)
    return True


def _rank(recipe: Recipe) -> bool:
    from alignment.store import Store

    store = Store(rankings_db(recipe))
    try:
        if recipe.chain.rank_with == "judge":
            from alignment.judges import build_scorer, judge_store

            judge_store(store, recipe.judge.name, build_scorer(recipe.judge, recipe.output_dir))
            return True
        count = sum(1 for _ in store.current_rankings())
    finally:
        store.close()
    if count >= recipe.chain.min_rankings:
        return True
    print(
        f"{count} rankings in {rankings_db(recipe)}, fewer than chain.min_rankings="
        f"{recipe.chain.min_rankings}. Let annotators rank in `align ui --db {rankings_db(recipe)} "
        f"--annotators annotators.yaml`, then continue with `align run <recipe> --from rm`."
    )
    return False


def _reading(recipe: Recipe, stage: str) -> Recipe:
    """The recipe with `<stage>.data` set to the run's own export of its rankings."""
    data = recipe.output_dir / EXPORTS[stage][1]
    if not data.is_file() or data.stat().st_size == 0:
        raise RunStateError(
            f"{rankings_db(recipe)}: no rankings to train on; run the sample and rank stages first"
        )
    section = getattr(recipe, stage)
    return recipe.model_copy(update={stage: section.model_copy(update={"data": str(data)})})


def _export(recipe: Recipe, stage: str) -> None:
    """Export the run's rankings as the stage's data. The file is replaced only when its rows
    change, so its time says when the rankings last changed."""
    from alignment.export import export_rows, write_jsonl
    from alignment.store import Store

    if not rankings_db(recipe).is_file():
        return  # nothing ranked in this run: _reading says so if the stage has to train
    fmt, name = EXPORTS[stage]
    out = recipe.output_dir / name
    fresh = out.with_name(f"{name}.new")
    store = Store(rankings_db(recipe))
    try:
        count = write_jsonl(export_rows(store, fmt), fresh)  # type: ignore[arg-type]
    finally:
        store.close()
    if out.is_file() and filecmp.cmp(fresh, out, shallow=False):
        fresh.unlink()  # the same rows: keep the file and its time
        return
    fresh.replace(out)
    log.info("exported %d %s rows to %s", count, fmt, out)
