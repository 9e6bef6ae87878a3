"""Numerical parity of every encoder with upstream MMAudio, as one table.

    python bench/parity/encoders.py --upstream /path/to/MMAudio [--deps DIR ...] [--only vae,clip]

Runs ``run()`` of bench/parity/{vae,vocoder,synchformer,clip}.py (mel + audio VAE, BigVGAN 16k and
v2, Synchformer visual, CLIP image/text) on CPU in float32 and prints, per compared output, the
largest relative difference max|ours - upstream| / max|upstream| and whether it is below the
tolerance. Upstream's modules import einops and librosa: ``--deps DIR`` adds a folder holding them
(e.g. made with ``pip install --target DIR einops librosa``) at the end of sys.path, so this
environment's own packages keep precedence. The exit status is 1 if any output fails.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TOLERANCE = 1e-5
# (table name, module under bench/parity/, extra run() keyword arguments)
SCRIPTS: list[tuple[str, str, dict]] = [
    ("mel / VAE", "vae", {}),
    ("vocoder", "vocoder", {}),
    ("synchformer", "synchformer", {}),
    ("clip", "clip", {"preset": "tiny"}),
]


def run_all(upstream_dir: str, deps: list[str], only: set[str] | None = None) -> list[tuple[str, str, float, float]]:
    """[(encoder, output, max rel diff, seconds of its script)] for every script selected.

    ``deps`` go to each script's ``run``, whose ``upstream_package`` puts them after our own packages.
    """
    rows: list[tuple[str, str, float, float]] = []
    for encoder, module, kwargs in SCRIPTS:
        if only is not None and module not in only:
            continue
        script = importlib.import_module(f"bench.parity.{module}")
        start = time.perf_counter()
        results = script.run(upstream_dir, deps=deps, **kwargs)
        seconds = time.perf_counter() - start
        rows += [(encoder, output, diff, seconds) for output, diff in results]
    return rows


def format_table(rows: list[tuple[str, str, float, float]], tolerance: float = TOLERANCE) -> str:
    header = ("encoder", "output", "max rel diff", f"< {tolerance:g}")
    body = [(enc, out, f"{diff:.3e}", "pass" if diff < tolerance else "FAIL") for enc, out, diff, _ in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    seconds: dict[str, float] = {}
    for enc, _, _, s in rows:
        seconds[enc] = s
    lines.append("")
    lines.append("script time: " + ", ".join(f"{enc} {s:.1f} s" for enc, s in seconds.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="checkout of hkchengrex/MMAudio")
    parser.add_argument("--deps", action="append", default=[],
                        help="folder of packages upstream needs (einops, librosa)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {[m for _, m, _ in SCRIPTS]}")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(",")) if args.only else None
    rows = run_all(str(Path(args.upstream).resolve()), [str(Path(d).resolve()) for d in args.deps], only)
    print(format_table(rows))
    sys.exit(0 if all(diff < TOLERANCE for _, _, diff, _ in rows) else 1)


if __name__ == "__main__":
    main()
