"""Do a feature set's Synchformer features carry event timing? A linear probe says.

    python bench/sync_probe.py [--train data/features/examples_train] [--test data/features/examples_test]
                               [--events data/examples/events.tsv] [--key sync_features]

Each of the 192 feature frames of a clip is labelled 1 when a known onset event (events.tsv, kinds
flash_click and impact) lies within +-``--label-sec`` of the frame's time ((k + 0.5) * 8 s / 192, the
time the flow network gives it); a logistic regression on the 768-d frame features is fitted on the
train set's clips with events and scored on the test set's: per-frame average precision, and onset
F1 at +-100 ms after picking local maxima above 0.5 of the probe's output. The same probe on features
whose frames are shuffled within each clip is the chance level. Prints a table; never asserted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmaudio.evaluation.proxies import match_onsets, read_event_times  # noqa: E402
from mmaudio.features import FeatureSet  # noqa: E402

CLIP_SEC = 8.0


def frame_times(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) * CLIP_SEC / n


def load(path: Path, events: dict[str, np.ndarray], key: str, label_sec: float):
    fs = FeatureSet.open(path)
    ids = [i for i in fs.ids if i in events]
    rows = torch.tensor([fs.ids.index(i) for i in ids])
    x = fs.rows(rows)[key].float()  # (N, T, C)
    t = frame_times(x.shape[1])
    y = torch.tensor(np.stack([(np.abs(t[:, None] - events[i][None, :]) <= label_sec).any(1) if len(events[i])
                               else np.zeros_like(t, bool) for i in ids]), dtype=torch.float32)
    return ids, x, y


def fit(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    mu, sd = x.mean((0, 1)), x.std((0, 1)) + 1e-6
    probe = torch.nn.Sequential(torch.nn.Linear(x.shape[-1], 1))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-3)
    pos_weight = (1 - y.mean()) / y.mean().clamp(min=1e-6)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(probe((x - mu) / sd).squeeze(-1), y, pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda z: torch.sigmoid(probe((z - mu) / sd).squeeze(-1)).detach()


def average_precision(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(-score)
    hits = label[order]
    precision = np.cumsum(hits) / (np.arange(len(hits)) + 1)
    return float((precision * hits).sum() / max(1, hits.sum()))


def onset_f1(prob: torch.Tensor, ids: list[str], events: dict[str, np.ndarray]) -> float:
    t = frame_times(prob.shape[1])
    f1 = []
    for p, i in zip(prob.numpy(), ids):
        peaks = [k for k in range(len(p)) if p[k] > 0.5 and p[k] == p[max(0, k - 2): k + 3].max()]
        f1.append(match_onsets(t[peaks], events[i], 0.1).f1)
    return float(np.mean(f1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=Path("data/features/examples_train"))
    ap.add_argument("--test", type=Path, default=Path("data/features/examples_test"))
    ap.add_argument("--events", type=Path, default=Path("data/examples/events.tsv"))
    ap.add_argument("--key", default="sync_features")
    ap.add_argument("--label-sec", type=float, default=0.06)
    a = ap.parse_args()
    events = {k: v[v < CLIP_SEC] for k, v in read_event_times(a.events).items()}
    _, xtr, ytr = load(a.train, events, a.key, a.label_sec)
    ids, xte, yte = load(a.test, events, a.key, a.label_sec)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([x[torch.randperm(x.shape[0], generator=g)] for x in xtr])
    print(f"| features | train clips | test clips | frame AP | onset F1 +-100 ms |\n|---|---|---|---|---|")
    for name, train_x in ((f"{a.key}", xtr), (f"{a.key}, frames shuffled (chance)", shuffled)):
        probe = fit(train_x, ytr)
        prob = probe(xte)
        ap_ = average_precision(prob.flatten().numpy(), yte.flatten().numpy())
        print(f"| {name} | {len(xtr)} | {len(xte)} | {ap_:.3f} | {onset_f1(prob, ids, events):.3f} |")
    print(f"positive frame rate (test): {float(yte.mean()):.3f}")


if __name__ == "__main__":
    main()
