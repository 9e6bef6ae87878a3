"""A throwaway evaluation workspace on the example media: params.yaml, an index of example videos, a
synthetic feature set with their ids, a micro network's weights, the tiny decoder files and (optionally)
tiny av-benchmark extractor files in their official formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from mmaudio.config import Params, validate
from mmaudio.encoders.profiles import get_profile
from mmaudio.encoders.tiny import write_tiny_weights
from mmaudio.evaluation.extractors import imagebind, panns, passt, synchformer_av, vggish
from mmaudio.features import write_feature_set
from mmaudio.model.network import NETWORK_PRESETS, build_network, save_network_weights
from tests.training.presets import MICRO

REPO = Path(__file__).resolve().parents[2]
TINY_FILES = ("v1-16.pth", "best_netG.pt")  # the 16k VAE and vocoder: all that decoding needs
DATASET = "ex_eval"


def write_tiny_extractors(folder: Path) -> list[Path]:
    """Seeded tiny PANNs, PaSST, VGGish, Synchformer (AV) and ImageBind files under their official names."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        panns.save_panns(panns.build_panns("tiny", seed=0), folder / panns.OFFICIAL_FILE_NAME),
        passt.save_passt(passt.build_passt("tiny", seed=1), folder / passt.OFFICIAL_FILE_NAME),
        vggish.save_vggish(vggish.build_vggish("tiny", seed=2), folder / vggish.OFFICIAL_FILE_NAME),
        synchformer_av.save_synchformer_av(synchformer_av.build_synchformer_av("tiny", seed=3),
                                           folder / synchformer_av.OFFICIAL_FILE_NAME),
        imagebind.save_imagebind(imagebind.build_imagebind("tiny", seed=4), folder / imagebind.OFFICIAL_FILE_NAME),
    ]


def copy_tiny_decoders(root: Path) -> None:
    """The tiny profile's VAE and vocoder under ``root``: copied from the repo's tiny_weights stage output
    when present (same seed, same bytes), else generated."""
    tiny = root / get_profile("tiny").root
    made = REPO / get_profile("tiny").root
    if all((made / f).is_file() for f in TINY_FILES):
        tiny.mkdir(parents=True)
        for f in TINY_FILES:
            shutil.copy(made / f, tiny / f)
    else:
        write_tiny_weights(tiny, seed=0)


def make_workspace(
    root: Path,
    examples: Path,
    ids: list[str],
    *,
    extractors: bool,
    evaluate: dict | None = None,
) -> Params:
    """Write the workspace into ``root`` (the caller chdirs there) and return its validated params."""
    NETWORK_PRESETS.setdefault(MICRO.name, MICRO)
    files = {p.stem: p.name for p in (examples / "video").iterdir()}
    labels = {}
    for split in ("train", "val", "test"):
        for line in (examples / f"video_{split}.tsv").read_text().splitlines()[1:]:
            i, label = line.split("\t")
            labels[i] = label
    (root / "index.tsv").write_text("id\tlabel\tfile\n" + "".join(f"{i}\t{labels[i]}\t{files[i]}\n" for i in ids))
    (root / "rejects.tsv").write_text("id\treason\n")

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["extract"]["out_dir"] = "features"
    raw["train"]["network"] = MICRO.name
    raw["train"]["out_dir"] = "train"
    raw["train"]["val_dataset"] = DATASET
    raw["train"]["datasets"] = {DATASET: 1}
    raw["tracking"]["enabled"] = False
    raw["video_datasets"] = {DATASET: {"media_dir": str(examples / "video"), "list_tsv": "l.tsv",
                                       "index_tsv": "index.tsv", "rejects_tsv": "rejects.tsv", "split": "test",
                                       "normalize_audio": False}}
    raw["evaluate"] = {**raw["evaluate"], "dataset": DATASET, "num_steps": 2, "device": "cpu", "batch_size": 2,
                       "events_tsv": str(examples / "events.tsv"), "out_dir": "eval", "num_logged_samples": 1,
                       "crepe": False, "extractor_dir": "ext_eval", "extractor_preset": "tiny", **(evaluate or {})}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))

    copy_tiny_decoders(root)
    (root / "ext_eval").mkdir()
    if extractors:
        write_tiny_extractors(root / "ext_eval")

    n = len(ids)
    g = torch.Generator().manual_seed(0)
    write_feature_set(
        root / "features" / DATASET, mode="16k", kind="video", ids=ids, texts=[labels[i] for i in ids],
        tensors={"mean": torch.randn(n, 250, 20, generator=g), "std": torch.full((n, 250, 20), 0.1),
                 "text_features": torch.randn(n, 77, 1024, generator=g),
                 "clip_features": torch.randn(n, 64, 1024, generator=g),
                 "sync_features": torch.randn(n, 192, 768, generator=g)},
    )
    torch.manual_seed(1)
    net = build_network(MICRO.name, latent_mean=torch.zeros(20), latent_std=torch.ones(20))
    with torch.no_grad():  # a fresh network's output layers start at zero: make it differ from the untrained one
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_network_weights(net, root / "train" / "weights.pth")
    return validate(raw)


class RecordingRun:
    """Stands in for StageRun: keeps what is logged (metrics with their step, tags, artifacts)."""

    def __init__(self, *args, **kwargs) -> None:
        self.run_id, self.hashes = "recorded", {}
        self.metrics: list[tuple[str, float, int | None]] = []
        self.tags: dict[str, str] = {}
        self.artifacts: list[str] = []

    def __enter__(self) -> "RecordingRun":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics += [(k, float(v), step) for k, v in metrics.items()]

    def set_tags(self, tags) -> None:
        self.tags |= {k: str(v) for k, v in tags.items()}

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append(f"{artifact_path}/{Path(path).name}")

    def log_params(self, params) -> None:
        pass

    def log_outputs(self, outputs) -> dict:
        return {}
