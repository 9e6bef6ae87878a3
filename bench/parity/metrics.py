"""Parity of mmaudio.evaluation.metrics with av-benchmark's metric functions on random features.

Imports av-benchmark's ``av_bench.metrics`` from ``--upstream`` (numpy/scipy/torch only) and
extracts ``make_class_grid`` from its synchformer module without importing it (that module needs
transformers). Prints ``name  max relative difference``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mmaudio.evaluation import metrics

if __package__ in (None, ""):  # run as a file: bench.parity.common is found from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.parity.common import function_from_source, parity_parser, run_cli  # noqa: E402


def _upstream_class_grid(upstream_dir: str):
    path = Path(upstream_dir) / "av_bench" / "synchformer" / "synchformer.py"
    return function_from_source(path, "make_class_grid", {"np": np, "torch": torch})


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def run(upstream_dir: str) -> list[tuple[str, float]]:
    sys.path.insert(0, upstream_dir)
    from av_bench.metrics.fad import compute_fd
    from av_bench.metrics.isc import compute_isc
    from av_bench.metrics.kl import compute_kl

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    out = []
    for n, d in [(50, 16), (300, 128), (20, 64)]:  # the last is rank-deficient (n < d)
        a = rng.standard_normal((n, d)).astype(np.float32)
        b = (rng.standard_normal((n + 7, d)) * 1.3 + 0.2).astype(np.float32)
        out.append((f"fd n={n} d={d}", _rel(metrics.frechet_distance(a, b), compute_fd(a, b))))
    pred, gt = torch.randn(64, 527, generator=gen), 2 * torch.randn(64, 527, generator=gen)
    up = compute_kl([pred], gt)
    out.append(("kl_softmax", _rel(metrics.kl_divergence(pred, gt), up["kl_softmax"])))
    out.append(("kl_sigmoid", _rel(metrics.kl_divergence(pred, gt, activation="sigmoid"), up["kl_sigmoid"])))
    for n in (64, 137):
        logits = 3 * torch.randn(n, 527, generator=gen)
        up = compute_isc(logits, None, 2020, True, 10)
        ours = metrics.inception_score(logits)
        out.append((f"is_mean n={n}", _rel(ours.mean, up["inception_score_mean"])))
        out.append((f"is_std n={n}", _rel(ours.std, up["inception_score_std"])))
    grid = _upstream_class_grid(upstream_dir)(-2, 2, 21)
    out.append(("desync_grid", float((grid - metrics.sync_offset_grid()).abs().max())))
    return out


def main() -> None:
    parser = parity_parser(__doc__, "av-benchmark checkout")
    run_cli(parser, lambda args: run(args.upstream), "relative difference (desync_grid: absolute)")


if __name__ == "__main__":
    main()
