"""The Hugging Face Hub: `align push` uploads an adapter directory with its model card, and
`resolve_adapter` lets every command that reads an adapter take a Hub id as well as a directory.

Everything here goes through `huggingface_hub`; when the Hub is offline (HF_HUB_OFFLINE) or cannot
be reached, the user gets a ModelSourceError saying so instead of a traceback.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alignment.errors import ModelSourceError

log = logging.getLogger(__name__)

# What a stage directory holds that belongs on the Hub: adapter, tokenizer, card, figures.
PUSH_ALLOW = [
    "*.json",
    "*.safetensors",
    "*.jsonl",
    "README.md",
    "*.jinja",
    "*.txt",
    "*.model",
]
# Resumable checkpoints and TensorBoard event files are large and only useful on this machine.
PUSH_IGNORE = ["checkpoints/*", "tensorboard/*", "*.partial", "*.partial/*"]


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport failures (DNS, refused connection, timeout) of the HTTP client huggingface_hub
    uses: httpx2 from huggingface_hub 2 on, httpx before."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except ImportError:
            continue
    return tuple(errors)


@contextmanager
def hub_errors(what: str, fallback: str) -> Iterator[None]:
    """Turn an offline, unreachable or refusing Hub into a ModelSourceError about `what`."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        # LocalEntryNotFoundError: offline and nothing cached (snapshot_download's offline answer).
        raise ModelSourceError(
            f"{what}: the Hugging Face Hub is offline (HF_HUB_OFFLINE is set) and nothing of it "
            f"is cached here. {fallback}"
        ) from None
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"{what}: no such repository on the Hub, or it is private and no token with access "
            f"was given (`hf auth login`, or HF_TOKEN). {fallback}"
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise ModelSourceError(
                f"{what}: the Hub refused the token ({status}); log in with a token that has "
                "write access (`hf auth login`, HF_TOKEN, or --token)"
            ) from None
        raise ModelSourceError(f"{what}: the Hub answered with an error: {err}") from None
    except _network_errors() as err:
        raise ModelSourceError(
            f"{what}: the Hugging Face Hub could not be reached ({type(err).__name__}: {err}). "
            f"{fallback}"
        ) from None


def looks_like_repo_id(text: str) -> bool:
    """`owner/name`: what a Hub id of an adapter looks like (a path has more parts or a prefix)."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and "\\" not in text


def resolve_adapter(path_or_repo_id: str | Path, what: str = "adapter") -> Path:
    """A local adapter directory as is; else, for an owner/name id, the Hub repo downloaded (or
    from the cache). Any other path comes back unchanged for the caller to check, whose message
    knows which stage makes that adapter."""
    text = str(path_or_repo_id)
    local = Path(text).expanduser()
    if local.is_dir() or not looks_like_repo_id(text):
        return local
    from huggingface_hub import snapshot_download

    fallback = (
        f"Download it on a connected machine (`hf download {text} --local-dir DIR`) and give DIR "
        "instead."
    )
    with hub_errors(f"{what} {text!r} is not a local directory, and as a Hub id", fallback):
        return Path(snapshot_download(text, allow_patterns=PUSH_ALLOW))


@dataclass(frozen=True)
class PushOutcome:
    repo_url: str
    commit_url: str
    files: list[str]


def files_to_push(adapter_dir: Path) -> list[str]:
    """The files `upload_folder` sends with PUSH_ALLOW/PUSH_IGNORE, listed for the user."""
    names = []
    for path in sorted(adapter_dir.rglob("*")):
        name = path.relative_to(adapter_dir).as_posix()
        if not path.is_file():
            continue
        allowed = any(fnmatch.fnmatch(name, p) for p in PUSH_ALLOW)
        if allowed and not any(fnmatch.fnmatch(name, p) for p in PUSH_IGNORE):
            names.append(name)
    return names


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
) -> PushOutcome:
    """Create the model repo if needed and upload the adapter directory, or the merged model
    directory of `align merge`, with its model card."""
    folder = Path(adapter_dir)
    if (folder / "adapter_config.json").is_file():
        what = f"{folder.name} adapter"
    elif (folder / "config.json").is_file():
        what = "merged model"
    else:
        raise ModelSourceError(
            f"{folder}: no adapter_config.json or config.json (not a PEFT adapter directory or a "
            "merged model from `align merge`)"
        )
    if not (folder / "README.md").is_file():
        raise ModelSourceError(
            f"{folder}: no README.md model card; directories written by `align` have one"
        )
    if not looks_like_repo_id(repo_id):
        raise ModelSourceError(f"--repo-id {repo_id!r}: expected owner/name, e.g. me/smollm2-ppo")
    files = files_to_push(folder)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with hub_errors(f"pushing {folder} to {repo_id}", "Nothing was uploaded."):
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        log.info("uploading %d files to %s: %s", len(files), repo, ", ".join(files))
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=f"align push: {what}",
            allow_patterns=PUSH_ALLOW,
            ignore_patterns=PUSH_IGNORE,
        )
    return PushOutcome(str(repo), str(commit.commit_url), files)
