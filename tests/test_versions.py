"""The installed libraries are within the version ranges pyproject.toml declares: the ranges are
what was tested, and the upper bounds guard private internals that a new release may change."""

import importlib.metadata

import pytest
from packaging.requirements import Requirement

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEPENDENCIES = [Requirement(text) for text in PROJECT["dependencies"]]
EXTRAS = [Requirement(text) for text in PROJECT["optional-dependencies"]["ui"]]


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("requirement", DEPENDENCIES + EXTRAS, ids=str)
def test_installed_version_is_one_pyproject_declares_tested(requirement):
    version = installed(requirement.name)
    if version is None:
        if requirement in EXTRAS:
            pytest.skip(f"{requirement.name} (an optional extra) is not installed")
        pytest.fail(f"{requirement.name} is a dependency in pyproject.toml but is not installed")
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{requirement.name} {version} is installed, but pyproject.toml allows {requirement} only: "
        "the range is what the test suite passed with. Check what changed in this release (the "
        "comment above the dependencies names the private internals used), run the suite, and "
        "move the bound"
    )


def test_libraries_whose_private_internals_are_used_have_an_upper_bound():
    bounded = {r.name for r in DEPENDENCIES if any(s.operator == "<" for s in r.specifier)}
    assert {"transformers", "trl", "peft", "bitsandbytes"} <= bounded
