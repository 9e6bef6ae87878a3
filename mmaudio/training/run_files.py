"""The train stage's small files: headline metrics and plot series (git-tracked, read by DVC), run id.

DVC draws every column of a plot file as a series and an empty cell as 0, so each series has its own
file holding only the rows where it was measured (the layout DVCLive writes):

    <train.out_dir>/metrics.json                   {"train": {"loss"}, "val": {"loss"}, "step"}: `dvc metrics` / `dvc exp show`
    <train.out_dir>/plots/metrics/train/loss.tsv   step, loss: the mean training loss of each logged window
    <train.out_dir>/plots/metrics/val/loss.tsv     step, loss: the validation loss, at validation steps only
    <train.out_dir>/plots/images/*.png             mel spectrograms of the final step's samples (evaluation.audio_samples)
    <train.out_dir>/mlflow_run_id.txt              the MLflow run and the SHA-256 of the weights.pth it made,
                                                   for the evaluate stage to log into (mmaudio.tracking);
                                                   git-ignored and not a DVC out: it differs in every
                                                   execution, everything else here is byte-identical

metrics.json keeps a handful of headline numbers so that `dvc exp show` stays narrow; every metric
goes to MLflow (``train/...``, ``val/...``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmaudio.tables import write_tsv
from mmaudio.tracking import RUN_ID_FILE, write_run_id_file

PLOTS_DIR = "plots"
IMAGES_DIR = f"{PLOTS_DIR}/images"
# (series, history column): history rows are [step, train loss, val loss] with nan where not measured
SERIES = (("train/loss", 1), ("val/loss", 2))


def series_path(out_dir: Path, name: str) -> Path:
    """``<out_dir>/plots/metrics/<group>/<metric>.tsv`` for a series named ``<group>/<metric>``."""
    return Path(out_dir) / PLOTS_DIR / "metrics" / f"{name}.tsv"


def write_run_files(
    out_dir: Path, history: list[list[float]], loss: float, val_loss: float | None, step: int, run_id: str | None,
    weights: Path,
) -> None:
    """metrics.json, one TSV per plotted series, and mlflow_run_id.txt (the run bound to ``weights``' hash)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"train": {"loss": _finite(loss)}, "val": {"loss": _finite(val_loss)}, "step": step}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for name, column in SERIES:
        metric = name.rsplit("/", 1)[1]
        rows = [{"step": str(int(row[0])), metric: f"{row[column]:.6g}"} for row in history if not math.isnan(row[column])]
        path = series_path(out_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tsv(path, ("step", metric), rows)
    write_run_id_file(out_dir / RUN_ID_FILE, run_id, weights)


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), 6)
