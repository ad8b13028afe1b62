"""Packaging and CI files agree with each other: pyproject's dependencies are requirements.txt's runtime pins (as
floors), and .ci/run runs the README's test command verbatim, setting the environment up only through it."""

import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def _pins(text):
    """name → version of the ``name==version`` lines (comments, blank and ``-r`` lines skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        ((op, version),) = [(s.operator, s.version) for s in req.specifier]
        assert op == "==", f"requirements.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = version
    return pins


def test_pyproject_dependencies_are_the_runtime_pins_as_floors():
    pins = _pins(_read("requirements.txt"))
    declared = {}
    for spec in tomllib.loads(_read("pyproject.toml"))["project"]["dependencies"]:
        req = Requirement(spec)
        ((op, version),) = [(s.operator, s.version) for s in req.specifier]
        assert op == ">=", f"pyproject.toml: {spec!r} should be a floor (>=) at requirements.txt's pin"
        declared[canonicalize_name(req.name)] = version
    assert declared == pins


def test_ci_runs_the_readme_test_command_and_sets_up_only_through_it():
    readme = _read("README.md")
    tests_section = readme[readme.index("Tests") :]
    command = re.search(r"```bash\n(.+?)\n```", tests_section, re.S).group(1).strip()
    assert "\n" not in command and command.startswith("bash tools/setup_env.sh && ")
    ci = [line for line in _read(".ci/run").splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert sum(command in line for line in ci) == 1, f".ci/run must run the README test command: {command}"
    setups = [line for line in ci if re.search(r"(bash|sh|source)\s+\S*setup_env\.sh", line)]
    assert len(setups) == 1 and command in setups[0]  # set up once, by the README command itself
    ruff = [line for line in ci if ".venv/bin/ruff" in line]
    assert any("ruff check ." in line for line in ruff) and any("ruff format --check ." in line for line in ruff)
