"""What the parity scripts under bench/parity/ share: importing upstream's ``mmaudio`` next to ours,
the relative difference they report, the stereo test signal, and the command line / report table.

The scripts run as files (``python bench/parity/vae.py ...``) and as modules of ``bench.parity``
(bench/parity/encoders.py, bench/perf/train_step.py); run as a file, each puts the repository root on
sys.path before importing this module.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import math
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

Rows = list[tuple[str, float]]  # (compared output, max |ours - upstream| / max |upstream|)


def _is_mmaudio(name: str) -> bool:
    return name == "mmaudio" or name.startswith("mmaudio.")


@contextlib.contextmanager
def upstream_package(upstream_dir: str, deps: Sequence[str] = ()) -> Iterator[None]:
    """Make ``import mmaudio`` resolve to upstream's package (it has the same name as ours) for the
    duration, then restore ours.

    Upstream modules imported inside keep working afterwards: they hold references to the submodules
    they imported. ``deps`` folders go after site-packages, so they only fill in what the environment
    lacks, and stay there afterwards because upstream code may import from them lazily.
    """
    ours = {k: m for k, m in sys.modules.items() if _is_mmaudio(k)}
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, upstream_dir)
    sys.path.extend(d for d in deps if d not in sys.path)
    try:
        yield
    finally:
        sys.path.remove(upstream_dir)
        for k in [k for k in sys.modules if _is_mmaudio(k)]:
            del sys.modules[k]
        sys.modules.update(ours)


def check_under(module: types.ModuleType, directory: str) -> None:
    """Fail if ``module`` was not imported from ``directory`` (an installed copy shadowed it)."""
    if not str(Path(module.__file__).resolve()).startswith(str(Path(directory).resolve())):
        raise RuntimeError(f"imported {module.__file__}, which is not under {directory}")


def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|, ``ref`` being upstream's; in float64 on CPU so that the
    difference itself adds no rounding."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {tuple(ours.shape)} vs upstream {tuple(ref.shape)}")
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def stereo_tones(num_samples: int, sample_rate: int, gen: torch.Generator) -> torch.Tensor:
    """(2, L) float64 test clip: six tones with vibrato (80 Hz .. 5 kHz), noise and a DC offset, so
    resampling, mean removal and mel filters all see structure. Draws from ``gen`` in a fixed order."""
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    x = torch.zeros(2, num_samples, dtype=torch.float64)
    for _ in range(6):
        f0 = 80 * 2 ** (6 * torch.rand(1, generator=gen).item())
        phase = 2 * math.pi * (f0 * t + 3 * torch.sin(2 * math.pi * 0.5 * t))
        x += 0.1 * torch.rand(2, 1, generator=gen, dtype=torch.float64) * torch.sin(phase)
    x += 0.05 * torch.randn(x.shape, generator=gen, dtype=torch.float64) + 0.02
    return x


def function_from_source(path: Path, name: str, namespace: dict) -> types.FunctionType:
    """Execute the top-level ``def name`` of ``path`` (only it) in ``namespace`` and return it: for
    upstream functions whose module cannot be imported here."""
    tree = ast.parse(path.read_text(), filename=str(path))
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    if len(defs) != 1:
        raise RuntimeError(f"{path} has {len(defs)} top-level functions named {name}")
    module = ast.Module(body=defs, type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)  # noqa: S102 - upstream's own code, verbatim
    return namespace[name]


def parity_parser(
    description: str, upstream_help: str, *, deps_help: str | None = None, threads: bool = False
) -> argparse.ArgumentParser:
    """``--upstream DIR`` (required), optionally ``--deps DIR`` (repeatable) and ``--threads N``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help=upstream_help)
    if deps_help is not None:
        parser.add_argument("--deps", action="append", default=[], help=deps_help)
    if threads:
        parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    return parser


def print_rows(rows: Rows, title: str) -> None:
    """One line per compared output, names padded to a column headed ``output``."""
    width = max(len(name) for name, _ in rows)
    print(f"{'output':<{width}}  {title}")
    for name, diff in rows:
        print(f"{name:<{width}}  {diff:.3e}")


def run_cli(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Rows], title: str, *, timed: bool = False
) -> None:
    """Parse the command line, set torch's threads if ``--threads`` exists, run and print the rows.

    ``title`` heads the difference column and is formatted with the arguments (``{preset}``).
    """
    args = parser.parse_args()
    if hasattr(args, "threads"):
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run(args)
    print_rows(rows, title.format(**vars(args)))
    if timed:
        print(f"({time.perf_counter() - start:.1f} s)")
