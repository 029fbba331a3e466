"""pyproject.toml, environment.yml, README.md and .ci/run must agree."""

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirements):
    return {Requirement(r).name.lower().replace("_", "-"): str(Requirement(r).specifier) for r in requirements}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert _normalise([r for r in pip_section if not r.startswith("-e")]) == _normalise(project["dependencies"])
    assert "-e ." in pip_section
    version = conda_python.split("=", 1)[1]
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.split(".")))


def test_pinned_ranges_keep_the_known_pitfalls_out():
    deps = {Requirement(r).name: Requirement(r) for r in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert deps["torch"].specifier.contains("2.13.0")
    assert deps["transformers"].specifier.contains("5.23.0")
    assert not deps["transformers"].specifier.contains("5.24.0"), "peft prefix-tuning breaks on 5.24.0"
    assert deps["nbgrader"].specifier.contains("0.9.6"), "mtl_tutorial.grading is tested with nbgrader 0.9.6"


def _fenced_commands(text):
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_installs_and_tests_exactly_as_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = _fenced_commands(readme)
    setup = readme.split("## Set up", 1)[1].split("##", 1)[0]
    test = readme.split("## Tests", 1)[1].split("##", 1)[0]
    setup_command = _fenced_commands(setup)[0]
    test_command = _fenced_commands(test)[0]
    assert setup_command in commands and test_command in commands
    assert setup_command in ci, f".ci/run must install with README's command: {setup_command}"
    assert test_command in ci, f".ci/run must test with README's command: {test_command}"
    assert "-m venv" in ci, ".ci/run must create a fresh virtual environment"
