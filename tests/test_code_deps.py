"""dvc.yaml's code deps are checked against the code each stage really imports.

For every stage, the stage script and every mmaudio module it imports (transitively, found by
``mmaudio.code_deps.code_closure``, the walk the training run key and the shard fingerprints also
hash) must be covered by a ``deps:`` entry: the file itself or a folder above it (``mmaudio/model``).
A declared mmaudio dep that covers none of those files is reported too: it reruns the stage for
code the stage never runs. A module the command runs with ``python -m`` (``mmaudio.check_params``
before ``torchrun``) counts as part of the stage, with its closure.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mmaudio.code_deps import PACKAGE_DIR, code_closure, code_digest, imported_modules

REPO = Path(__file__).resolve().parents[1]


def dvc_stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    """Stage name -> its definition (the ``do`` block of a ``foreach`` stage), templates unresolved."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: st.get("do", st) for name, st in stages.items()}


def stage_script(stage: dict) -> Path:
    found = re.findall(r"stages/\w+\.py", stage["cmd"])
    assert len(found) == 1, f"one stage script expected in cmd {stage['cmd']!r}"
    return REPO / found[0]


def cmd_modules(stage: dict) -> list[str]:
    """Modules of this package that the stage's command runs with ``python -m``."""
    return re.findall(r"python -m (mmaudio(?:\.\w+)+)", stage["cmd"])


def code_deps_problems(stage: dict, repo: Path = REPO) -> tuple[list[str], list[str]]:
    """(files the stage runs that no dep covers, declared code deps that cover none of them)."""
    script = stage_script(stage)
    needed = [script, *code_closure(script, *cmd_modules(stage))]
    needed_rel = [p.relative_to(repo).as_posix() for p in needed]
    declared = [d for d in stage.get("deps", []) if isinstance(d, str) and "${" not in d]
    code_declared = [d.rstrip("/") for d in declared if d.startswith(("mmaudio", "stages/"))]

    def covers(dep: str, rel: str) -> bool:
        return rel == dep or rel.startswith(dep + "/")

    missing = [rel for rel in needed_rel if not any(covers(d, rel) for d in code_declared)]
    unused = [d for d in code_declared if not any(covers(d, rel) for rel in needed_rel)]
    return missing, unused


STAGES = dvc_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(name):
    missing, unused = code_deps_problems(STAGES[name])
    assert not missing, f"dvc.yaml stage {name!r}: add to deps (the stage imports them): {missing}"
    assert not unused, f"dvc.yaml stage {name!r}: deps the stage never imports (remove them): {unused}"


def test_a_removed_dep_is_reported():
    stage = dict(STAGES["evaluate"])
    stage["deps"] = [d for d in stage["deps"] if d != "mmaudio/model"]
    missing, _ = code_deps_problems(stage)
    assert "mmaudio/model/network.py" in missing and "mmaudio/model/layers.py" in missing
    stage["deps"] = [*stage["deps"], "mmaudio/examples.py"]
    assert code_deps_problems(stage)[1] == ["mmaudio/examples.py"]


def test_a_module_the_command_runs_is_a_dep():
    stage = dict(STAGES["train"])
    assert cmd_modules(stage) == ["mmaudio.check_params"]
    stage["deps"] = [d for d in stage["deps"] if d != "mmaudio/check_params.py"]
    assert code_deps_problems(stage)[0] == ["mmaudio/check_params.py"]
    stage["cmd"] = stage["cmd"].replace("python -m mmaudio.check_params && ", "")
    stage["deps"] = [*stage["deps"], "mmaudio/check_params.py"]
    assert code_deps_problems(stage)[1] == ["mmaudio/check_params.py"]


def test_closure_follows_imports_inside_functions_and_packages():
    # evaluate imports FeatureEncoders inside a function; the encoders' files come in through it
    closure = {p.relative_to(PACKAGE_DIR).as_posix() for p in code_closure("mmaudio.evaluation.evaluate")}
    assert {"encoders/feature_encoders.py", "encoders/bigvgan.py", "modes.py", "weights/io.py", "weights/resolve.py"} <= closure
    # `from mmaudio.evaluation.extractors import ...` runs that package's __init__, which has code
    assert "evaluation/extractors/__init__.py" in closure
    # an __init__ with only a docstring and constants cannot change a number: not a dep
    assert "__init__.py" not in closure and "model/__init__.py" not in closure
    # the walk stays inside the package
    assert all(p.is_relative_to(PACKAGE_DIR) for p in code_closure("mmaudio.evaluation.evaluate"))


def test_digests_skip_bookkeeping_and_change_with_the_code(tmp_path, monkeypatch):
    from mmaudio import code_deps

    closure = code_closure("mmaudio.training.train")
    assert PACKAGE_DIR / "tracking.py" in closure  # DVC reruns train when it changes ...
    numbers = code_closure("mmaudio.training.train", stop=code_deps.BOOKKEEPING)
    assert PACKAGE_DIR / "tracking.py" not in numbers  # ... but checkpoints stay resumable
    assert PACKAGE_DIR / "model" / "network.py" in numbers

    # a copy of the package: editing a module of the closure changes the digest, one outside does not
    pkg = tmp_path / "mmaudio"
    import shutil

    shutil.copytree(PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_deps, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(code_deps, "REPO_DIR", tmp_path)
    before = code_digest("mmaudio.extraction.jobs")
    (pkg / "examples.py").write_text((pkg / "examples.py").read_text() + "\n# not imported by extraction\n")
    (pkg / "tracking.py").write_text((pkg / "tracking.py").read_text() + "\n# bookkeeping\n")
    assert code_digest("mmaudio.extraction.jobs") == before
    (pkg / "segments.py").write_text((pkg / "segments.py").read_text() + "\n# decoding changed\n")
    assert code_digest("mmaudio.extraction.jobs") != before


def test_only_stages_import_the_cli_helpers():
    # entry points too: the modules a stage's command runs with `python -m` (mmaudio.check_params)
    entry_points = {f"{m.replace('.', '/')}.py" for st in STAGES.values() for m in cmd_modules(st)}
    assert entry_points == {"mmaudio/check_params.py"}
    importers = [p.relative_to(REPO).as_posix() for p in sorted(PACKAGE_DIR.rglob("*.py"))
                 if "mmaudio.cli" in imported_modules(p)]
    library = [p for p in importers if p not in entry_points]
    assert library == [], f"library modules import mmaudio.cli (only stages/ and entry points may): {library}"
    assert all("mmaudio.cli" in imported_modules(p) for p in sorted((REPO / "stages").glob("*.py")))


def test_stages_do_not_touch_sys_path():
    offenders = [p.name for p in sorted((REPO / "stages").glob("*.py")) if "sys.path" in p.read_text()]
    assert offenders == [], f"stages must import the installed package, not edit sys.path: {offenders}"
