"""Which source files a stage or a computation runs: the import closure inside the mmaudio package.

One walk serves three readers, so the lists cannot drift apart:

- ``tests/test_code_deps.py`` checks that every stage's ``deps:`` in dvc.yaml cover the closure of its
  script (a change to any module the stage imports reruns the stage);
- the training run key (``mmaudio.training.train.code_digest``) hashes the closure of the training
  loop, so checkpoints of other code are not resumed;
- the extraction shard fingerprint (``mmaudio.extraction.shards.code_fingerprint``) hashes the
  closure of the extraction jobs, so shards of other code are recomputed.

The walk is static (``ast``): every ``import mmaudio...`` / ``from mmaudio... import ...`` anywhere in
a file counts, including imports inside functions, which the stages use to load heavy modules only
when needed. Only files of this package are followed; third-party code is pinned by the lock files.
Importing ``mmaudio.a.b`` also runs ``mmaudio/__init__.py`` and ``mmaudio/a/__init__.py``: those
count too, except an inert ``__init__.py``: one that holds only a docstring and constants such as
``__version__`` (it cannot change anything a stage computes).
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "mmaudio"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent

# Modules whose code never changes a computed number (run bookkeeping, argument parsing). The digests
# of the run key and the shard fingerprint do not follow them, so editing how a run is logged does not
# throw away checkpoints or finished shards. DVC still reruns a stage that imports them (its deps
# cover the whole closure).
BOOKKEEPING = tuple(f"{PACKAGE}.{name}" for name in ("tracking", "hashing", "cli"))


def module_file(name: str) -> Path | None:
    """The source file of module ``name`` of this package (``a.b`` -> a/b.py or a/b/__init__.py)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.resolve().relative_to(REPO_DIR).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_inert(path: Path) -> bool:
    """Only a docstring and constant assignments (``__version__ = "0.1.0"``)."""
    body = ast.parse(path.read_text(), filename=str(path)).body
    return all(isinstance(n, (ast.Expr, ast.Assign)) and isinstance(n.value, ast.Constant) for n in body)


def imported_modules(path: str | os.PathLike) -> set[str]:
    """The modules of this package that the file at ``path`` imports (anywhere in it), with the
    packages above each (their ``__init__`` runs first)."""
    path = Path(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    here = _module_name(path).split(".") if path.resolve().is_relative_to(PACKAGE_DIR) else []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                anchor = here if is_package else here[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    modules = set()
    for name in found:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if module_file(prefix) is not None:
                modules.add(prefix)
    return modules


def code_closure(*roots: str | os.PathLike, stop: Iterable[str] = ()) -> list[Path]:
    """Every source file of this package that ``roots`` (module names or file paths, e.g. a stage
    script) import, directly or through each other, sorted; the roots themselves when they are files
    of the package. Modules named in ``stop`` are neither included nor followed."""
    stop = set(stop)
    todo: list[Path] = []
    for root in roots:
        path = module_file(str(root)) if isinstance(root, str) and not str(root).endswith(".py") else Path(root)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no module or file {root!r} to compute the code closure of")
        todo.append(path.resolve())
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            if name not in stop:
                todo.append(module_file(name).resolve())
    inside = [p for p in seen if p.is_relative_to(PACKAGE_DIR)]
    return sorted(p for p in inside if not (p.name == "__init__.py" and _is_inert(p)))


def code_digest(*roots: str | os.PathLike) -> str:
    """sha256 over the paths and contents of the code that computes the numbers of ``roots``: their
    closure without :data:`BOOKKEEPING` modules."""
    h = hashlib.sha256()
    for f in code_closure(*roots, stop=BOOKKEEPING):
        h.update(f.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
