"""Nothing is fetched or sent at run time: no native code from the Hub, no telemetry.

Imported by `alignment/__init__.py`, so it is in place before any stage module imports peft,
transformers or TRL (a library that imported them before `alignment` is beyond its reach).
tests/test_privacy_runtime.py records every lookup, connect and kernel fetch to check it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any


class _BitsandbytesWithoutHubKernels(importlib.abc.MetaPathFinder):
    """Imports bitsandbytes' CPU backend with the `kernels` package out of reach.

    On a CPU with AVX512-BF16, importing `bitsandbytes.backends.cpu.ops` (which `import peft`
    does, so every command, even with quantization none) calls
    `kernels.get_kernel("kernels-community/quantization-bitsandbytes")`: with `kernels` installed
    and a network it downloads native code from the Hub and runs it; offline it logs a warning
    nobody can act on. Neither bitsandbytes 0.50 nor kernels has a switch for this, so that one
    module is imported with `kernels` unimportable (a None entry in sys.modules); bitsandbytes
    then keeps the CPU kernel of its own wheel, and the warning about that fallback is dropped.

    It must be in place before bitsandbytes is first imported; see the module docstring.
    """

    MODULE = "bitsandbytes.backends.cpu.ops"

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != self.MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderWithoutHubKernels(spec.loader)
        return spec


class _LoaderWithoutHubKernels(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, ... as the real loader
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        was_imported, kernels = "kernels" in sys.modules, sys.modules.get("kernels")
        sys.modules["kernels"] = None  # type: ignore[assignment]  # import raises ImportError
        fallback = logging.getLogger(_BitsandbytesWithoutHubKernels.MODULE)
        fallback.addFilter(_not_about_hub_kernels)
        try:
            self.loader.exec_module(module)
        finally:
            fallback.removeFilter(_not_about_hub_kernels)
            if was_imported:
                sys.modules["kernels"] = kernels  # type: ignore[assignment]
            else:
                del sys.modules["kernels"]


def _not_about_hub_kernels(record: logging.LogRecord) -> bool:
    return "kernels-community" not in record.getMessage()


def install() -> None:
    """Put the guard first on the import path and turn telemetry off unless the user opted in."""
    if not any(isinstance(f, _BitsandbytesWithoutHubKernels) for f in sys.meta_path):
        sys.meta_path.insert(0, _BitsandbytesWithoutHubKernels())
    # TRL's trainers report every run to the Hub (huggingface_hub.send_telemetry: requests to
    # huggingface.co naming the trainer, model type and hardware). A run on local files contacts
    # no one unless the user sets HF_HUB_DISABLE_TELEMETRY=0.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")  # read at import: already imported?
    opted_out = os.environ["HF_HUB_DISABLE_TELEMETRY"].upper() in ("1", "ON", "YES", "TRUE")
    if constants is not None and opted_out:
        constants.HF_HUB_DISABLE_TELEMETRY = True
