"""`align run`: the recipe's stages in order, each reading the previous stage's output.

    sft → sample → rank → rm → ppo (or dpo) → eval → report

Finished stages are skipped, so a rerun resumes where the last one stopped (a stage that was
interrupted resumes from its checkpoint). `--from STAGE` runs that stage and the ones after it
again; their earlier outputs are moved aside, never deleted. `--until STAGE` stops after it.
With `chain.rank_with: humans` the chain stops after sampling until enough rankings are in.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from alignment.config import Recipe
from alignment.errors import RecipeError, RunStateError

log = logging.getLogger(__name__)
TRAINED = ("sft", "rm", "ppo", "dpo")  # stages whose output is an adapter directory


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


def _move_aside(path: Path) -> None:
    if path.exists():
        target = path.with_name(f"{path.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        log.info("moving earlier output %s to %s", path, target)
        shutil.move(path, target)


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
        if start is not None:
            # Everything from --from on is redone; keep what was there.
            _move_aside(recipe.output_dir / stage)
        elif is_finished(recipe, stage):
            log.info("stage %s: finished earlier, skipping", stage)
            continue
        log.info("stage %s: starting", stage)
        if not _run_stage(recipe, stage):
            break
        ran.append(stage)
    return ran


def _has_checkpoint(recipe: Recipe, stage: str) -> bool:
    return any((recipe.output_dir / stage / "checkpoints").glob("*"))


def _run_stage(recipe: Recipe, stage: str) -> bool:
    """Run one stage; False means the chain stops here (waiting for human rankings)."""
    run = recipe.output_dir
    resume = _has_checkpoint(recipe, stage)
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

        run_rm(
            _reading(recipe, "rm", _export(recipe, "rankings", run / "comparisons.jsonl")), resume
        )
    elif stage == "ppo":
        from alignment.ppo import run_ppo

        run_ppo(recipe, resume=resume)
    elif stage == "dpo":
        from alignment.dpo import run_dpo

        run_dpo(_reading(recipe, "dpo", _export(recipe, "pairs", run / "pairs.jsonl")), resume)
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


def _reading(recipe: Recipe, stage: str, data: Path) -> Recipe:
    """The recipe with `<stage>.data` set to the run's own export."""
    section = getattr(recipe, stage)
    return recipe.model_copy(update={stage: section.model_copy(update={"data": str(data)})})


def _export(recipe: Recipe, fmt: str, out: Path) -> Path:
    from alignment.export import export_rows, write_jsonl
    from alignment.store import Store

    store = Store(rankings_db(recipe))
    try:
        count = write_jsonl(export_rows(store, fmt), out)  # type: ignore[arg-type]
    finally:
        store.close()
    if count == 0:
        raise RunStateError(
            f"{rankings_db(recipe)}: no rankings to train on; run the sample and rank stages first"
        )
    log.info("exported %d %s rows to %s", count, fmt, out)
    return out
