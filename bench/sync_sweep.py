"""Sweep training settings for learning audio-visual sync on the example set, and score each run.

The question it answers (issue 13): which training settings make the tiny network's onsets follow
the video, measured by the evaluate stage's own scores (onset-vs-event F1 at +-100 ms against the
untrained network and the shuffled-video control). Each configuration is one real run of the train
stage's script and one call of :func:`mmaudio.evaluation.evaluate.evaluate`, with MLflow off and no
DVC, so that it can also run where those are not installed (the GPU machine, with the wheels of
../shared/tools/gpu-wheels.sh; not yet run there: no GPU machine could be started when it was written).
Configurations run ``--parallel`` at a time; on the 2-core box use 1 and ``OMP_NUM_THREADS=1``.

    python bench/sync_sweep.py prepare [key=value ...]      # the data stages, in dvc.yaml's order
    python bench/sync_sweep.py run --work DIR --parallel 4 \\
        --config lr1e-3:train.learning_rate=1e-3 --config lr2e-3:train.learning_rate=2e-3 \\
        [--common key=value ...] [--json OUT.json]

``--config NAME:k=v;k=v`` names one run; ``--common`` applies to all. Runs go to DIR/<name>/{train,
evaluate}; the table gives training wall time, the last losses and the sync scores.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA_STAGES = (
    ["stages/make_examples.py"],
    ["stages/tiny_weights.py"],
    ["stages/partition.py", "--dataset", "examples_audio"],
    *(["stages/index_videos.py", "--dataset", f"examples_{s}"] for s in ("train", "val", "test")),
    ["stages/extract_audio.py", "--dataset", "examples_audio"],
    *(["stages/extract_video.py", "--dataset", f"examples_{s}"] for s in ("train", "val", "test")),
)
SCORES = ("proxy_onset_event_f1", "proxy_onset_event_precision", "proxy_onset_event_recall",
          "proxy_onset_event_mean_abs_offset_sec", "proxy_fd_logmel")


def _python(args: list[str], log: Path | None = None) -> float:
    t0 = time.perf_counter()
    out = open(log, "w") if log else None  # noqa: SIM115 (closed below)
    try:
        subprocess.run([sys.executable, *args], check=True, stdout=out, stderr=subprocess.STDOUT if out else None)
    except subprocess.CalledProcessError as e:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"{' '.join(args[:2])} failed (rc {e.returncode}); log {log}:\n{tail}") from None
    finally:
        if out:
            out.close()
    return time.perf_counter() - t0


def prepare(overrides: list[str]) -> None:
    for stage in DATA_STAGES:
        dt = _python([*stage, "tracking.enabled=false", *overrides])
        print(f"{' '.join(stage)}: {dt:.1f} s", flush=True)


def score(overrides: list[str], out_json: str) -> None:
    """One evaluation, in this process; every score (not only the headline ones) to ``out_json``."""
    from mmaudio.config import load_params
    from mmaudio.distributed import init_distributed
    from mmaudio.evaluation.evaluate import evaluate

    params = load_params(overrides)
    scores = evaluate(params, init_distributed(params.evaluate.device))
    Path(out_json).write_text(json.dumps(scores, indent=1, sort_keys=True))


def _last_loss(tsv: Path) -> float | None:
    if not tsv.is_file():
        return None
    rows = [r.split("\t") for r in tsv.read_text().splitlines()[1:] if r.strip()]
    return float(rows[-1][1]) if rows else None


def one_run(name: str, overrides: list[str], work: Path) -> dict:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    common = ["tracking.enabled=false", f"train.out_dir={d / 'train'}", f"evaluate.out_dir={d / 'evaluate'}"]
    t_train = _python(["stages/train.py", *common, *overrides], d / "train.log")
    t_eval = _python([__file__, "score", "--json", str(d / "scores.json"), "--", *common, *overrides], d / "evaluate.log")
    scores = json.loads((d / "scores.json").read_text())
    return {"name": name, "overrides": overrides, "train_s": round(t_train, 1), "eval_s": round(t_eval, 1),
            "train_loss": _last_loss(d / "train" / "plots" / "metrics" / "train" / "loss.tsv"),
            "val_loss": _last_loss(d / "train" / "plots" / "metrics" / "val" / "loss.tsv"), "scores": scores}


def run(work: Path, configs: list[tuple[str, list[str]]], parallel: int, out_json: Path | None) -> None:
    results = []
    with cf.ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(one_run, n, o, work): n for n, o in configs}
        for f in cf.as_completed(futures):
            try:
                r = f.result()
            except SystemExit as e:  # one failed configuration must not hide the others' results
                print(f"{futures[f]}: {e}", flush=True)
                continue
            results.append(r)
            s = r["scores"]
            print(f"done {r['name']}: train {r['train_s']} s, F1 {s.get('proxy_onset_event_f1')}, "
                  f"shuffled {s.get('shuffled_proxy_onset_event_f1')}", flush=True)
            if out_json:
                out_json.write_text(json.dumps(results, indent=1))
    order = {n: i for i, (n, _) in enumerate(configs)}
    results.sort(key=lambda r: order[r["name"]])
    head = ["config", "train s", "train loss", "val loss", "F1", "P", "R", "offset s", "F1 untrained",
            "F1 shuffled", "fd_logmel"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in results:
        s = r["scores"]

        def f(k: str, p: str = "") -> str:
            v = s.get(p + k)
            return "-" if v is None else f"{v:.3f}"

        print(f"| {r['name']} | {r['train_s']} | {r['train_loss']} | {r['val_loss']} | {f(SCORES[0])} | "
              f"{f(SCORES[1])} | {f(SCORES[2])} | {f(SCORES[3])} | {f(SCORES[0], 'baseline_')} | "
              f"{f(SCORES[0], 'shuffled_')} | {f(SCORES[4])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("overrides", nargs="*")
    s = sub.add_parser("score")
    s.add_argument("--json", required=True)
    s.add_argument("overrides", nargs="*")
    r = sub.add_parser("run")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--parallel", type=int, default=1)
    r.add_argument("--config", action="append", required=True, help="NAME:key=value;key=value")
    r.add_argument("--common", action="append", default=[])
    r.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.overrides)
    elif a.cmd == "score":
        score(a.overrides, a.json)
    else:
        configs = []
        for c in a.config:
            name, _, rest = c.partition(":")
            configs.append((name, [*a.common, *[kv for kv in rest.split(";") if kv]]))
        run(a.work, configs, a.parallel, a.json)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
