"""Typed configuration: params.yaml composed through Hydra, validated against dataclasses.

params.yaml at the repository root is the single source of truth (DVC tracks it, `dvc exp run -S`
edits it). Every stage calls :func:`load_params` with its command-line overrides; the result is a
tree of dataclasses that
callers treat as read-only (OmegaConf cannot merge into frozen dataclasses). An unknown key or a value of the wrong type raises :class:`ConfigError`
naming the key. Derived values are properties, never written back.
"""

from __future__ import annotations

import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mmaudio.choices import Device, ExtractorPreset, Profile, Schedule, Solver, StorageDtype, choice_values
from mmaudio.modes import AudioMode

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """params.yaml or an override is invalid; the message names the key.

    ``key``, ``value`` and ``allowed`` are set where the raiser knows them; :func:`error_report`
    renders the three-line message a stage prints instead of a traceback.
    """

    def __init__(self, message: str, *, key: str | None = None, value: Any = None, allowed: str | None = None):
        super().__init__(message)
        self.key, self.value, self.allowed = key, value, allowed


# "key 'a.b' must be one of (...), got 'x'": the form every value check below uses
_CHECK_MESSAGE = re.compile(r"key '(?P<key>[^']+)'(?: \((?P<given>[^)]*)\))? (?P<allowed>(?:must|needs|is not) .*?)(?:, got (?P<value>.*))?$")


def error_report(e: ConfigError) -> str:
    """Three lines: where, the key and its value, what is allowed (or the message when no key is known)."""
    text = str(e)
    source, sep, rest = text.partition(": ")
    if not sep or not source.endswith(PARAMS_FILE):
        source, rest = PARAMS_FILE, text
    key, value, allowed = e.key, e.value, e.allowed
    m = _CHECK_MESSAGE.search(rest)
    if key is None and m:
        key, allowed = m["key"], m["allowed"]
        value = m["value"] if m["value"] is not None else f"({m['given']})" if m["given"] else "(see the message)"
    if key is None:
        return f"config error in {source}:\n  {rest}\n  see params.yaml's comments and README \"Params\""
    shown = value if isinstance(value, str) and value.startswith(("'", "(")) else repr(value)
    return f"config error in {source}: key '{key}'\n  value:   {shown}\n  allowed: {allowed}"


@dataclass
class SyncClipsConfig:
    """Clips per split of the learnable example set (mmaudio.sync_examples); 0: none."""

    train: int = 0
    val: int = 0
    test: int = 0


@dataclass
class ExamplesConfig:
    """The example-media generator (stage `make_examples`)."""

    seed: int = 0
    out_dir: str = "data/examples"
    sync_clips: SyncClipsConfig = field(default_factory=SyncClipsConfig)
    sync_frame_size: int = 64  # square frames (pixels) of the learnable set


@dataclass
class CodecConfig:
    """Training of the tiny VAE and vocoder inside stage `tiny_weights` (mmaudio.codec_training)."""

    modes: list[str] = field(default_factory=lambda: ["16k"])  # modes whose VAE + vocoder are trained; others stay random
    vae_steps: int = 1000
    vocoder_steps: int = 600
    vae_batch_size: int = 8
    vocoder_batch_size: int = 4
    vae_segment_frames: int = 64  # mel frames per training segment
    vocoder_segment_frames: int = 32
    learning_rate: float = 2.0e-3
    kl_weight: float = 1.0e-4
    checkpoint_every: int = 100  # steps between resumable states in <out_dir>.work/
    num_threads: int = 1  # torch CPU threads: the result depends on it, so it is a param


@dataclass
class TinyWeightsConfig:
    """The tiny weight profile's files (stage `tiny_weights`): seeded random weights, official formats."""

    seed: int = 0
    out_dir: str = "ext_weights/tiny"  # where the `tiny` profile reads them (mmaudio.encoders.profiles)
    examples_dir: str | None = None  # example media (make_examples' out_dir) to train the codec on; null: codec stays random
    codec: CodecConfig = field(default_factory=CodecConfig)


@dataclass
class PartitionConfig:
    """Upstream's clip partitioning (training/partition_clips.py), made explicit."""

    min_duration_sec: float = 8.1  # shorter files are skipped (into the rejects manifest)
    segment_sec: float = 8.1  # each clip; 0.1 s of slack over the 8 s the model sees
    max_segments: int = 5  # evenly spaced over the file


@dataclass
class AudioDatasetConfig:
    """An audio-only dataset: a folder of flac/wav files and a captions TSV keyed by file stem."""

    media_dir: str = "???"
    captions_tsv: str = "???"
    clips_tsv: str = "???"  # written by the partition stage
    rejects_tsv: str = "???"  # files the partition stage could not use, with the reason


@dataclass
class VideoDatasetConfig:
    """A video dataset: a folder of videos and a list TSV (`id, label`) of one split."""

    media_dir: str = "???"
    list_tsv: str = "???"
    index_tsv: str = "???"  # written by the index_videos stage: the usable rows with stream facts
    rejects_tsv: str = "???"  # rows the index stage could not use, with the reason
    split: str = "train"
    normalize_audio: bool = True  # peak-normalise training audio (upstream), not val/test


@dataclass
class IndexConfig:
    """Header checks of video lists (stage `index_videos`)."""

    min_duration_sec: float = 8.0  # the clip length the model trains on


@dataclass
class ExtractConfig:
    """Feature extraction (stages `extract_audio@<dataset>`, `extract_video@<dataset>`)."""

    mode: str = "16k"  # mmaudio.modes.AudioMode: audio rate, clip length in samples and latent shape
    storage_dtype: str = "float32"  # float32 (upstream's format) | bfloat16 (half the disk)
    batch_size: int = 8  # clips per encoder call, per process
    num_workers: int = 2  # decoding processes per extraction process; 0 decodes in the process itself
    shard_size: int = 256  # rows per resumable unit of work (a finished shard survives a kill)
    device: str = "auto"  # auto (GPU if any) | cpu | cuda
    allow_tf32: bool = True  # TF32 matmuls/convolutions on GPU, as upstream's extraction scripts
    amp: bool = False  # bf16 autocast for the CLIP image tower and Synchformer: faster on GPU, features change within bf16 tolerance
    nproc_per_node: int = 1  # processes torchrun starts on this machine (one per GPU)
    out_dir: str = "data/features"  # dataset <name> goes to <out_dir>/<name>


@dataclass
class EmaConfig:
    """Post-hoc EMA (Karras et al. 2024): power-function averages tracked during training, combined
    afterwards into the average of any width. Upstream: nitrous-ema's PostHocEMA."""

    sigma_rels: list[float] = field(default_factory=lambda: [0.05, 0.1])  # tracked widths (>= 2 distinct)
    snapshot_every: int = 5000  # optimizer steps between snapshots of every average (also one at the end)
    output_sigma_rel: float = 0.05  # width of the exported weights, synthesised from the snapshots


@dataclass
class SamplingConfig:
    """How the train stage samples while it trains: the audio samples of every ``val_interval`` and the
    evaluation of every ``eval_interval``. Its own keys, not ``evaluate.*``: changing how the evaluate
    stage samples then reruns only that stage, and these keys are not part of the run key."""

    solver: str = "euler"  # euler | adaptive (torchdiffeq dopri5)
    num_steps: int = 25  # Euler steps
    cfg_strength: float = 4.5
    seed: int = 0  # row i's noise: a generator seeded from (seed, i), independent of batching
    batch_size: int = 8  # rows per network / decoder call, per process


@dataclass
class TrainConfig:
    """The flow network's training (stage `train`); defaults are upstream's recipe for small_16k."""

    network: str = "small_16k"  # preset in mmaudio.model.presets.NETWORK_PRESETS; its mode must equal extract.mode
    datasets: dict[str, int] = field(default_factory=dict)  # feature set name -> repeat factor per epoch
    val_dataset: str | None = None  # feature set for the validation loss; null: no validation
    latent_stats_dataset: str | None = None  # latent mean/std source; null: the first video set in datasets
    device: str = "auto"  # auto (GPU if any) | cpu | cuda
    global_batch_size: int = 512  # summed over all processes; must be divisible by the world size
    learning_rate: float = 1.0e-4
    weight_decay: float = 1.0e-6
    warmup_steps: int = 1000  # linear warm-up: lr * (i + 1) / (warmup_steps + 1) at step i
    schedule: str = "step"  # after warm-up: step | constant | cosine
    milestones: list[int] = field(default_factory=lambda: [240_000, 270_000])  # step schedule, counted after warm-up
    gamma: float = 0.1  # step schedule: lr factor at each milestone
    num_iterations: int = 300_000  # optimizer steps
    grad_clip: float = 1.0  # max global L2 norm of the gradients
    null_condition_probability: float = 0.1  # CFG dropout: video (clip+sync together) and text independently
    logit_normal_mean: float = 0.0  # flow time t = sigmoid(N(mean, scale^2))
    logit_normal_scale: float = 1.0
    ema: EmaConfig = field(default_factory=EmaConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    checkpoint_every: int = 10_000  # optimizer steps between checkpoints (also one at the end)
    keep_last: int = 2  # checkpoints kept; older ones are deleted after a newer one is written
    val_interval: int = 5000  # optimizer steps between validation losses (also one at the end)
    eval_interval: int = 0  # optimizer steps between evaluations of the val set (train.sampling.* settings, val/<metric>); 0: off
    log_interval: int = 200  # optimizer steps per logged metrics row (means over the window)
    num_audio_samples: int = 2  # val rows sampled, decoded and logged to MLflow at every validation (0: none)
    seed: int = 14159265
    compile: bool = True  # torch.compile the loss computation
    amp: bool = True  # bf16 autocast on GPU (no effect on CPU); also picks AdamW eps 1e-6 (else 1e-8)
    nproc_per_node: int = 1  # processes torchrun starts on this machine (one per GPU)
    prefetch: int = 2  # batches read ahead by a background thread (0: read in the loop)
    weights: str | None = None  # fine-tune from a network weight file (e.g. mmaudio_small_16k.pth)
    empty_string: str | None = None  # empty-string text features; null: the profile's empty_string.pth
    out_dir: str = "models/train"  # checkpoints/, weights.pth, metrics.json, plots/, mlflow_run_id.txt


@dataclass
class EvaluateConfig:
    """Sampling and scoring of the trained network on a feature set (stage `evaluate`)."""

    dataset: str = "examples_test"  # a video feature set (<extract.out_dir>/<name>) and its video dataset entry
    solver: str = "euler"  # euler | adaptive (torchdiffeq dopri5)
    num_steps: int = 25  # Euler steps
    cfg_strength: float = 4.5
    seed: int = 0  # row i's noise: a generator seeded from (seed, i), independent of batching
    batch_size: int = 8  # rows per network / decoder call, per process
    device: str = "auto"  # auto (GPU if any) | cpu | cuda
    events_tsv: str | None = "data/examples/events.tsv"  # known event times for proxy_onset_event_*; null: none
    crepe: bool = True  # proxy_fd_crepe with torchcrepe's tiny model on CPU
    baseline: bool = True  # also score the untrained network (init from train.seed): baseline_* scores
    shuffled_control: bool = True  # also score the trained network given another clip's video: shuffled_* scores
    num_logged_samples: int = 2  # sample flac files logged to MLflow as artifacts
    extractor_dir: str = "ext_weights"  # where the av-benchmark extractor files are looked for (by official file name)
    extractor_preset: str = "official"  # official | tiny: the architecture those files hold (tiny: tests only)
    out_dir: str = "models/evaluate"  # samples/, baseline_samples/, gt/, scores.json


@dataclass
class TrackingConfig:
    """MLflow. `uri: null` means a SQLite file at the repo root (or $MLFLOW_TRACKING_URI if set)."""

    uri: str | None = None
    experiment: str = "mmaudio"
    enabled: bool = True  # false: stages log nothing (benchmarks, machines without mlflow installed)


@dataclass
class Params:
    """The whole of params.yaml."""

    profile: str = "tiny"  # weight profile: tiny (generated, default) | official (ext_weights/)
    examples: ExamplesConfig = field(default_factory=ExamplesConfig)
    tiny_weights: TinyWeightsConfig = field(default_factory=TinyWeightsConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    audio_datasets: dict[str, AudioDatasetConfig] = field(default_factory=dict)
    video_datasets: dict[str, VideoDatasetConfig] = field(default_factory=dict)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


PROFILES = choice_values(Profile)
# Seeds are drawn into derived seeds (per rank, per row, per file) by multiplication; 32 bits keep
# every derived seed inside the 64 bits torch and numpy accept.
MAX_SEED = 2**32 - 1


def find_repo_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) that holds params.yaml.

    DVC runs stage commands in the workspace it is reproducing (a temporary copy for queued
    experiments), so the params.yaml found from cwd is the one this run must use.
    """
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / PARAMS_FILE).is_file():
            return d
    raise ConfigError(f"no {PARAMS_FILE} found in {here} or any parent folder")


def load_params(overrides: Sequence[str] = (), root: str | os.PathLike | None = None) -> Params:
    """Compose ``root/params.yaml`` with Hydra-style ``overrides`` into a validated :class:`Params`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    root = Path(root).resolve() if root is not None else find_repo_root()
    path = root / PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    try:
        _refuse_alias_bombs(path)
        with initialize_config_dir(config_dir=str(root), version_base=None):
            raw = compose(config_name=Path(PARAMS_FILE).stem, overrides=list(overrides))
    except HydraException as e:
        raise _override_error(e, path, overrides) from e
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, str(path), overrides, None) from e
    except yaml.YAMLError as e:  # also a python/object tag: the safe loader refuses to build it
        raise ConfigError(f"{path}: not valid YAML: {_yaml_reason(e)}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte offset {e.start})") from e
    except RecursionError as e:  # an alias that contains itself (a: &a [*a])
        raise ConfigError(f"{path}: a YAML alias refers to itself") from e
    _check_complete(raw, Params, "", str(path))
    return validate(raw, source=str(path), overrides=overrides)


MAX_YAML_NODES = 100_000  # params.yaml has a few hundred; an alias bomb expands to billions
MAX_YAML_DEPTH = 64  # params.yaml nests 4 deep; far deeper would exhaust Python's stack in OmegaConf


def _refuse_alias_bombs(path: Path) -> None:
    """Count the nodes ``path`` would expand to, following aliases, without expanding them.

    YAML aliases share one node, so nested aliases ("billion laughs") grow the loaded tree
    exponentially while the file stays small; OmegaConf would copy every branch and exhaust memory.
    """
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except RecursionError as e:
        raise ConfigError(f"{path}: its YAML nests deeper than {MAX_YAML_DEPTH} levels; refused") from e
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ConfigError(f"{path}: a YAML alias refers to itself")
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        open_nodes.discard(id(node))
        sizes[id(node)] = n
        return n

    def depth(node: yaml.Node, level: int) -> None:
        if level > MAX_YAML_DEPTH:
            raise ConfigError(f"{path}: its YAML nests deeper than {MAX_YAML_DEPTH} levels; refused")
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and id(node) not in seen:
            seen.add(id(node))
            for child in (c for pair in node.value for c in pair) if isinstance(node, yaml.MappingNode) else node.value:
                depth(child, level + 1)

    seen: set[int] = set()
    if root is not None:
        depth(root, 1)
    total = size(root) if root is not None else 0
    if total > MAX_YAML_NODES:
        raise ConfigError(
            f"{path}: its YAML aliases expand to {total} values (at most {MAX_YAML_NODES} are read); "
            "refused before expanding them"
        )


def _yaml_reason(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or _first_line(e)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def validate(raw: DictConfig | dict[str, Any], source: str = PARAMS_FILE, overrides: Sequence[str] = ()) -> Params:
    """Merge ``raw`` onto the dataclass schema; unknown keys and wrong types name the key."""
    schema = OmegaConf.structured(Params)
    try:
        merged = OmegaConf.merge(schema, raw)
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _omegaconf_error(e, source, overrides, raw) from e
    _check_values(params, source)
    return params


def _check_values(p: Params, source: str) -> None:
    # nan passes every `x <= 0` test and inf overflows later arithmetic: refuse both, by key.
    for key, value in to_flat_dict(p).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{source}: key '{key}' must be a finite number, got {v}")
    if p.profile not in PROFILES:
        raise ConfigError(f"{source}: key 'profile' must be one of {PROFILES}, got {p.profile!r}")
    if p.index.min_duration_sec <= 0:
        raise ConfigError(f"{source}: key 'index.min_duration_sec' must be > 0, got {p.index.min_duration_sec}")
    for name in [*p.audio_datasets, *p.video_datasets]:
        _check_dataset_name(name, source)
    if p.partition.max_segments < 1:
        raise ConfigError(f"{source}: key 'partition.max_segments' must be >= 1, got {p.partition.max_segments}")
    if p.partition.segment_sec <= 0:
        raise ConfigError(f"{source}: key 'partition.segment_sec' must be > 0, got {p.partition.segment_sec}")
    for key, seed in (("examples.seed", p.examples.seed), ("tiny_weights.seed", p.tiny_weights.seed)):
        _check_range(source, key, seed, 0, MAX_SEED)
    _check_extract(p.extract, source)
    _check_tracking(p.tracking, source)
    _check_train(p, source)
    _check_network_mode(p, source)
    _check_sampling(p.train.sampling, "train.sampling", source)
    _check_evaluate(p.evaluate, source)
    _check_examples_and_codec(p, source)
    if p.partition.min_duration_sec < p.partition.segment_sec:
        raise ConfigError(
            f"{source}: key 'partition.min_duration_sec' ({p.partition.min_duration_sec}) must be >= "
            f"'partition.segment_sec' ({p.partition.segment_sec})"
        )


def _check_examples_and_codec(p: Params, source: str) -> None:
    for split in ("train", "val", "test"):
        n = getattr(p.examples.sync_clips, split)
        if not 0 <= n <= 100_000:
            raise ConfigError(f"{source}: key 'examples.sync_clips.{split}' must be in [0, 100000], got {n}")
    size = p.examples.sync_frame_size
    if not 16 <= size <= 1024 or size % 2:
        raise ConfigError(f"{source}: key 'examples.sync_frame_size' must be even and in [16, 1024], got {size}")
    c = p.tiny_weights.codec
    bad = [m for m in c.modes if m not in ("16k", "44k")]
    if bad or len(set(c.modes)) != len(c.modes):
        raise ConfigError(f"{source}: key 'tiny_weights.codec.modes' must list distinct modes of ('16k', '44k'), got {list(c.modes)}")
    for key, low in (("vae_steps", 0), ("vocoder_steps", 0), ("vae_batch_size", 1), ("vocoder_batch_size", 1),
                     ("vae_segment_frames", 4), ("vocoder_segment_frames", 4), ("checkpoint_every", 1), ("num_threads", 1)):
        if getattr(c, key) < low:
            raise ConfigError(f"{source}: key 'tiny_weights.codec.{key}' must be >= {low}, got {getattr(c, key)}")
    for key in ("vae_segment_frames", "vocoder_segment_frames"):
        if getattr(c, key) % 2:
            raise ConfigError(f"{source}: key 'tiny_weights.codec.{key}' must be even, got {getattr(c, key)}")
    if c.learning_rate <= 0 or c.kl_weight < 0:
        raise ConfigError(f"{source}: keys 'tiny_weights.codec.learning_rate' must be > 0 and 'kl_weight' >= 0")


def _check_dataset_name(name: str, source: str) -> None:
    # a dataset name becomes a folder (<extract.out_dir>/<name>, <name>.work): the rules of file names
    from mmaudio.tables import TableError, check_id

    try:
        check_id(name, what="dataset name")
    except TableError as e:
        raise ConfigError(f"{source}{e}") from e
    if name.startswith("."):
        raise ConfigError(f"{source}: dataset name {name!r} must not start with '.' (hidden, and the temp folders' prefix)")


EXTRACT_CHOICES = {"mode": choice_values(AudioMode), "storage_dtype": choice_values(StorageDtype), "device": choice_values(Device)}


def _check_extract(e: ExtractConfig, source: str) -> None:
    for key, choices in EXTRACT_CHOICES.items():
        if getattr(e, key) not in choices:
            raise ConfigError(f"{source}: key 'extract.{key}' must be one of {choices}, got {getattr(e, key)!r}")
    for key, low in (("batch_size", 1), ("shard_size", 1), ("num_workers", 0), ("nproc_per_node", 1)):
        if getattr(e, key) < low:
            raise ConfigError(f"{source}: key 'extract.{key}' must be >= {low}, got {getattr(e, key)}")


TRAIN_CHOICES = {"schedule": choice_values(Schedule), "device": choice_values(Device)}


def _check_train(p: Params, source: str) -> None:
    t = p.train
    for key, choices in TRAIN_CHOICES.items():
        if getattr(t, key) not in choices:
            raise ConfigError(f"{source}: key 'train.{key}' must be one of {choices}, got {getattr(t, key)!r}")
    lows = (
        ("global_batch_size", 1), ("num_iterations", 1), ("warmup_steps", 0), ("checkpoint_every", 1),
        ("keep_last", 1), ("val_interval", 1), ("log_interval", 1), ("nproc_per_node", 1), ("prefetch", 0),
        ("num_audio_samples", 0), ("eval_interval", 0),
    )
    for key, low in lows:
        if getattr(t, key) < low:
            raise ConfigError(f"{source}: key 'train.{key}' must be >= {low}, got {getattr(t, key)}")
    if t.global_batch_size % t.nproc_per_node:
        raise ConfigError(
            f"{source}: key 'train.global_batch_size' ({t.global_batch_size}) must be divisible by "
            f"'train.nproc_per_node' ({t.nproc_per_node})"
        )
    if not 0.0 <= t.null_condition_probability <= 1.0:
        raise ConfigError(f"{source}: key 'train.null_condition_probability' must be in [0, 1], got {t.null_condition_probability}")
    for key in ("learning_rate", "grad_clip", "logit_normal_scale"):
        _check_range(source, f"train.{key}", getattr(t, key), 0.0, math.inf, low_open=True)
    # a negative decay pushes weights away from zero; gamma <= 0 would zero or negate the lr at a milestone
    _check_range(source, "train.weight_decay", t.weight_decay, 0.0, 1.0)
    _check_range(source, "train.gamma", t.gamma, 0.0, 1.0, low_open=True)
    _check_range(source, "train.seed", t.seed, 0, MAX_SEED)
    if sorted(t.milestones) != list(t.milestones) or any(m < 1 for m in t.milestones):
        raise ConfigError(f"{source}: key 'train.milestones' must be increasing positive steps, got {list(t.milestones)}")
    for name, repeat in t.datasets.items():
        if repeat < 1:
            raise ConfigError(f"{source}: key 'train.datasets.{name}' (repeat factor) must be >= 1, got {repeat}")
    if t.latent_stats_dataset is not None and t.latent_stats_dataset not in t.datasets:
        raise ConfigError(f"{source}: key 'train.latent_stats_dataset' ({t.latent_stats_dataset!r}) is not in train.datasets")
    sig = list(t.ema.sigma_rels)
    if len(sig) < 2 or len(set(sig)) != len(sig) or any(not 0 < s < 0.3 for s in sig):
        raise ConfigError(f"{source}: key 'train.ema.sigma_rels' needs >= 2 distinct values in (0, 0.3), got {sig}")
    if not 0 < t.ema.output_sigma_rel < 0.3:
        raise ConfigError(f"{source}: key 'train.ema.output_sigma_rel' must be in (0, 0.3), got {t.ema.output_sigma_rel}")
    if t.ema.snapshot_every < 1:
        raise ConfigError(f"{source}: key 'train.ema.snapshot_every' must be >= 1, got {t.ema.snapshot_every}")


def _check_network_mode(p: Params, source: str) -> None:
    # Training takes the mode from the network preset, extraction and evaluation from extract.mode:
    # features of one mode fed to a network of the other would fail late or, worse, not at all.
    from mmaudio.model.presets import NETWORK_PRESETS  # the registry is the one fact of a preset's mode

    preset = NETWORK_PRESETS.get(p.train.network)
    if preset is None:
        raise ConfigError(
            f"{source}: key 'train.network' ({p.train.network!r}) is not a known network preset "
            f"(known: {sorted(NETWORK_PRESETS)})"
        )
    if preset.mode != p.extract.mode:
        raise ConfigError(
            f"{source}: key 'train.network' ({p.train.network!r}, mode {preset.mode}) does not match "
            f"key 'extract.mode' ({p.extract.mode!r}); pick a {p.extract.mode} preset or set extract.mode={preset.mode}"
        )


def _check_sampling(s: EvaluateConfig | SamplingConfig, section: str, source: str) -> None:
    """The sampling keys that ``evaluate`` and ``train.sampling`` share."""
    if s.solver not in choice_values(Solver):
        raise ConfigError(f"{source}: key '{section}.solver' must be one of {choice_values(Solver)}, got {s.solver!r}")
    for key in ("num_steps", "batch_size"):
        if getattr(s, key) < 1:
            raise ConfigError(f"{source}: key '{section}.{key}' must be >= 1, got {getattr(s, key)}")
    _check_range(source, f"{section}.seed", s.seed, 0, MAX_SEED)
    _check_range(source, f"{section}.cfg_strength", s.cfg_strength, 0.0, math.inf)


def _check_evaluate(e: EvaluateConfig, source: str) -> None:
    for key, choices in (("device", choice_values(Device)), ("extractor_preset", choice_values(ExtractorPreset))):
        if getattr(e, key) not in choices:
            raise ConfigError(f"{source}: key 'evaluate.{key}' must be one of {choices}, got {getattr(e, key)!r}")
    if e.num_logged_samples < 0:
        raise ConfigError(f"{source}: key 'evaluate.num_logged_samples' must be >= 0, got {e.num_logged_samples}")
    _check_sampling(e, "evaluate", source)


def _check_range(source: str, key: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """``value`` in [low, high] (or (low, high] with ``low_open``), else an error naming key, value and range."""
    if (value <= low if low_open else value < low) or value > high:
        shown = "inf)" if high == math.inf else ("2**32 - 1]" if high == MAX_SEED else f"{high:g}]")
        raise ConfigError(f"{source}: key '{key}' must be in {'(' if low_open else '['}{low:g}, {shown}, got {value}")


def _check_tracking(t: TrackingConfig, source: str) -> None:
    from mmaudio.tracking import redact_credentials  # the one definition of what a secret in a URI looks like

    # params.yaml is committed, copied into dvc.lock and experiment commits and logged to MLflow: a
    # password there is a password in every clone; the environment keeps it on this machine
    if t.uri and redact_credentials(t.uri) != t.uri:
        raise ConfigError(
            f"{source}: key 'tracking.uri' ({redact_credentials(t.uri)}) carries credentials; keep the URI plain "
            "and put them in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN, "
            "or the whole URI in MLFLOW_TRACKING_URI"
        )


def _check_complete(raw: Any, schema: type, prefix: str, source: str) -> None:
    """Every key of the schema must be in params.yaml: a deleted key would otherwise silently take the
    dataclass default (upstream's full-scale recipe: 300000 steps, compile, small_16k)."""
    hints = typing.get_type_hints(schema)
    for name in schema.__dataclass_fields__:
        key = f"{prefix}{name}"
        if not isinstance(raw, (dict, DictConfig)) or name not in raw:
            raise ConfigError(f"{source}: key '{key}' is missing", key=key, value="(missing)",
                              allowed=f"{_type_name(hints[name])}; every key must be in {PARAMS_FILE} (README \"Params\")")
        value, kind = raw[name], hints[name]
        if hasattr(kind, "__dataclass_fields__"):
            _check_complete(value, kind, f"{key}.", source)
        elif typing.get_origin(kind) is dict and isinstance(value, (dict, DictConfig)):
            entry = typing.get_args(kind)[1]
            if hasattr(entry, "__dataclass_fields__"):
                for item, sub in value.items():
                    _check_complete(sub, entry, f"{key}.{item}.", source)


def _type_name(kind: Any) -> str:
    """A schema annotation in words, for error messages."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if kind in words:
        return words[kind]
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin is list:
        return f"a list of {_type_name(args[0]).split(' ', 1)[-1]}s"
    if origin is dict:
        return f"a mapping of name -> {_type_name(args[1])}"
    if args:  # X | None
        return " or ".join(_type_name(a) for a in args)
    if hasattr(kind, "__dataclass_fields__"):
        return f"a section with keys {', '.join(kind.__dataclass_fields__)}"
    return getattr(kind, "__name__", str(kind))


def _schema_node(key: str) -> tuple[Any, Any]:
    """(the annotation of dotted ``key`` in :class:`Params`, its parent's annotation); None where unknown."""
    kind: Any = Params
    parent: Any = None
    for part in re.sub(r"\[\d+\]", "", key).split("."):
        parent = kind
        if hasattr(kind, "__dataclass_fields__"):
            kind = typing.get_type_hints(kind).get(part)
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        else:
            return None, parent
    return kind, parent


def _given_value(key: str, overrides: Sequence[str], raw: Any) -> Any:
    for o in reversed(list(overrides)):
        name, sep, value = o.lstrip("+~").partition("=")
        if sep and name == key:
            return value
    if raw is not None:
        try:
            return OmegaConf.select(OmegaConf.create(raw) if isinstance(raw, dict) else raw, key, default="(not set)")
        except OmegaConfBaseException:
            return "(not set)"
    return "(see the message)"


def _unknown_key_error(key: str, source: str, value: Any) -> ConfigError:
    _, parent = _schema_node(key)
    known = ", ".join(parent.__dataclass_fields__) if hasattr(parent, "__dataclass_fields__") else "see params.yaml"
    return ConfigError(f"{source}: key '{key}' is not a known key", key=key, value=value,
                       allowed=f"the keys of its section: {known}")


def _omegaconf_error(e: OmegaConfBaseException, source: str, overrides: Sequence[str], raw: Any) -> ConfigError:
    key = getattr(e, "full_key", None) or None
    if key is None:
        return ConfigError(f"{source}: {_describe(e)}")
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        return _unknown_key_error(key, source, _given_value(key, overrides, None))
    kind, _ = _schema_node(key)
    if re.search(r"\[\d+\]$", key) and typing.get_origin(_schema_node(re.sub(r"\[\d+\]$", "", key))[0]) is list:
        kind = typing.get_args(_schema_node(re.sub(r"\[\d+\]$", "", key))[0])[0]
    m = re.search(r"Value '(.*?)'", str(e))
    value = repr(m.group(1)) if m else _given_value(key, overrides, raw)
    allowed = _type_name(kind) if kind is not None else _first_line(e)
    return ConfigError(f"{source}: {_describe(e)}", key=key, value=value, allowed=allowed)


def _override_error(e: BaseException, path: Path, overrides: Sequence[str]) -> ConfigError:
    """Hydra says only "Could not override 'x'."; the reason is in the exception it wraps."""
    cause = e.__cause__ or e.__context__
    if isinstance(cause, OmegaConfBaseException):
        err = _omegaconf_error(cause, str(path), overrides, None)
        if err.key is not None:
            return err
    m = re.search(r"override '([^']+)'", str(e))
    if m and isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return _unknown_key_error(m.group(1), str(path), _given_value(m.group(1), overrides, None))
    return ConfigError(f"{path}: {_first_line(e)}" + (f" ({_first_line(cause)})" if cause is not None else ""))


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    msg = _first_line(e)
    return f"key '{key}': {msg}" if key else msg


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a config (dataclasses / dicts) into dotted keys, for MLflow params."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(to_flat_dict(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}
