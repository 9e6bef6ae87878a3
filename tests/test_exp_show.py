"""`dvc exp show` as the README gives it fits a 200-column terminal with the changed param and the
headline metrics readable (no cell cut to `…`).

A real git + DVC repo in tmp with the project's params.yaml and one stage that writes the two metrics
files in the layout the pipeline writes (`mmaudio.training.run_files`, `headline_scores` with every
headline score present: the widest case, official metrics included), its values moved by the param;
two real `dvc exp run -S evaluate.cfg_strength=...` experiments, then the README's command.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys

from mmaudio.evaluation.evaluate import CONTROL_PREFIXES, headline_scores
from tests.conftest import REPO, run

COLUMNS = 200
# the README's compare command, exactly
EXP_SHOW = ["dvc", "exp", "show", "--no-pager", "--only-changed"]

WRITE = """\
import json, sys, yaml
cfg = yaml.safe_load(open("params.yaml"))["evaluate"]["cfg_strength"]
doc = json.load(open("scores_template.json"))
# the trained network's and the shuffled control's scores move with the guidance; the baseline's do not
for group in ("test", "shuffled"):
    doc[group] = {k: v * (1 + cfg / 100) for k, v in doc[group].items()}
json.dump(doc, open("models/evaluate/scores.json", "w"), indent=2)
"""


OFFICIAL = ("fd_passt", "desync", "ib_score")  # computed where their extractor files are present


def _widest_scores_json() -> dict:
    """scores.json as the evaluation writes it (headline_scores), for the set of official files that
    gives the longest metric names: every score computed, with long values."""
    docs = []
    for n in range(len(OFFICIAL) + 1):
        for present in itertools.combinations(OFFICIAL, n):
            names = ("proxy_fd_logmel", "proxy_onset_gt_f1", "proxy_onset_event_f1", *present)
            docs.append(headline_scores({p + k: 257.2180931273998 + i for i, (p, k) in
                                         enumerate((p, k) for p in ("", *CONTROL_PREFIXES) for k in names)}))
    return max(docs, key=lambda d: sum(len(f"{group}.{k}") for group, values in d.items() for k in values))


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def test_exp_show_of_two_experiments_fits_200_columns(tmp_path):
    repo = tmp_path / "repo"
    (repo / "models" / "train").mkdir(parents=True)
    (repo / "models" / "evaluate").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    # the train stage's metrics.json as run_files writes it; every headline score, with long values
    (repo / "models" / "train" / "metrics.json").write_text(
        json.dumps({"train": {"loss": 0.395767}, "val": {"loss": 0.479963}, "step": 300}, indent=1))
    doc = _widest_scores_json()
    assert sorted(doc) == ["baseline", "shuffled", "test"]
    (repo / "scores_template.json").write_text(json.dumps(doc))
    (repo / "write.py").write_text(WRITE)
    (repo / "dvc.yaml").write_text(
        "stages:\n"
        "  evaluate:\n"
        f"    cmd: {sys.executable} write.py\n"
        "    deps: [write.py, scores_template.json]\n"
        "    params: [evaluate.cfg_strength, evaluate.num_steps, evaluate.seed]\n"
        "    metrics:\n"
        "      - models/evaluate/scores.json:\n"
        "          cache: false\n"
        "metrics: [models/train/metrics.json]\n"
    )
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    for value in ("3.0", "6.0"):
        run(["dvc", "exp", "run", "-S", f"evaluate.cfg_strength={value}", "-n", f"cfg-{value}"], repo)

    shown = run(EXP_SHOW, repo, env={"COLUMNS": str(COLUMNS)}).stdout
    assert _widest(shown) <= COLUMNS, shown
    assert "…" not in shown, shown
    header = " ".join(line for line in shown.splitlines()[:4])
    assert "cfg_strength" in header and "proxy_fd_logmel" in header, shown
    rows = [line for line in shown.splitlines() if re.search(r"cfg-(3|6)\.0", line)]
    assert len(rows) == 2 and any(" 3 " in r or " 3.0 " in r for r in rows), shown
