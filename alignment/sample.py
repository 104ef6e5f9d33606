"""`align sample`: K candidate answers per prompt from the base model (plus an adapter), into the
ranking store.

Resumable: prompts that already have candidates in the store are skipped, and each prompt is
committed with its K candidates in one transaction as soon as they are generated, so an
interrupted run loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from alignment.config import Recipe
from alignment.data import read_prompts
from alignment.errors import DataError, ModelSourceError
from alignment.generation import GenerationSettings, generate
from alignment.hub import resolve_adapter
from alignment.store import NewCandidate, Store, prompt_key
from alignment.tokens import encode_prompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleOutcome:
    prompts: int  # distinct prompts in the file
    skipped: int  # already sampled earlier
    sampled: int
    candidates: int
    db: str  # the SQLite file, or the database URL without its password


def candidate_seed(base_seed: int, key: str, index: int) -> int:
    """The seed of candidate `index` of a prompt: fixed by the base seed and the prompt's text,
    not by batch composition or the order prompts come in."""
    digest = hashlib.sha256(f"{base_seed}:{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # fits a signed 64-bit SQLite integer


def _progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )


def run_sample(
    recipe: Recipe,
    prompts_file: str,
    db: str | Path,
    k: int | None = None,
    adapter: str | Path | None = None,
    limit: int | None = None,
) -> SampleOutcome:
    cfg = recipe.sample if k is None else recipe.sample.model_copy(update={"k": k})
    if cfg.k < 2:
        raise DataError(f"--k {cfg.k}: ranking needs at least 2 candidates per prompt")
    base_seed = recipe.seed if cfg.seed is None else cfg.seed
    settings = GenerationSettings.from_config(cfg)
    adapter_path = resolve_adapter(adapter, "--adapter").resolve() if adapter else None
    if adapter_path is not None and not (adapter_path / "adapter_config.json").is_file():
        raise ModelSourceError(
            f"--adapter {adapter}: no adapter_config.json there (not a PEFT adapter)"
        )

    rows = read_prompts(prompts_file)[:limit]  # limit: the first N prompts only
    store = Store(db)
    done = store.sampled_keys()
    todo: list[tuple[str, str, list[dict[str, str]]]] = []
    seen: set[str] = set()
    for origin, messages in rows:
        key = prompt_key(messages)
        if key in seen:
            log.warning("%s: same prompt as an earlier line; sampled once", origin)
            continue
        seen.add(key)
        if key not in done:
            todo.append((origin, key, messages))
    skipped = len(seen) - len(todo)
    if skipped:
        log.info(
            "%d of %d prompts already have candidates in %s; skipping them",
            skipped,
            len(seen),
            store.name,
        )
    if not todo:
        store.close()
        return SampleOutcome(len(seen), skipped, 0, 0, store.name)

    from alignment.models import base_model_id, load_model, load_tokenizer, resolve_model

    source = resolve_model(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    # Check every prompt's length before the (slow) model load, naming the line at fault.
    for origin, _, messages in todo:
        length = len(encode_prompt(tokenizer, messages))
        if length > cfg.max_prompt_tokens:
            raise DataError(
                f"{origin}: prompt is {length} tokens, more than sample.max_prompt_tokens="
                f"{cfg.max_prompt_tokens}"
            )
    model = load_model(recipe.model, source=source)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
    model_name = base_model_id(recipe.model)
    sampling = settings.sampling()

    # Enough prompts per round that K candidates each fill about one batch.
    per_round = max(1, settings.batch_size // cfg.k)
    candidates = 0
    with _progress_bar() as bar:
        task = bar.add_task(f"sampling {cfg.k} per prompt", total=len(todo))
        for start in range(0, len(todo), per_round):
            chunk = todo[start : start + per_round]
            prompts = [messages for _, _, messages in chunk for _ in range(cfg.k)]
            seeds = [candidate_seed(base_seed, key, i) for _, key, _ in chunk for i in range(cfg.k)]
            completions = generate(model, tokenizer, prompts, settings, seeds, progress_label=None)
            for n, (origin, _, messages) in enumerate(chunk):
                group = completions[n * cfg.k : (n + 1) * cfg.k]
                store.add_sampled(
                    messages,
                    [
                        NewCandidate(
                            text=c.text,
                            model=model_name,
                            adapter=str(adapter_path) if adapter_path else None,
                            settings=sampling,
                            seed=seeds[n * cfg.k + i],
                            num_tokens=c.num_tokens,
                            finish_reason=c.finish_reason,
                        )
                        for i, c in enumerate(group)
                    ],
                    source=origin,
                )
                candidates += len(group)
            bar.advance(task, len(chunk))
    store.close()
    return SampleOutcome(len(seen), skipped, len(todo), candidates, store.name)
