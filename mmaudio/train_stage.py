"""The train stage's composition: resolve what the trainer needs and build its callbacks, then fit.

    torchrun --standalone --nproc_per_node=1 stages/train.py   # main() -> train(params, ctx)
    result = train(load_params(["train.num_iterations=100"]))   # the same, in one Python process

As in lightning-hydra-template, the entry point composes and the trainer trains:
:func:`mmaudio.training.train.fit` receives the empty-string text features (found through the weight
profile, :class:`~mmaudio.training.train.TrainInputs`) and two callbacks, built here:

- audio samples (:class:`~mmaudio.evaluation.audio_samples.AudioSamples`, rank 0) every
  ``train.val_interval`` steps, sampled with the ``train.sampling.*`` settings;
- evaluation of ``train.val_dataset`` (:class:`~mmaudio.evaluation.evaluate.TrainingEvaluation`,
  every rank) every ``train.eval_interval`` steps when that is > 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmaudio.config import Params, find_repo_root
from mmaudio.distributed import DistContext, resolve_device
from mmaudio.encoders.profiles import EMPTY_STRING_FILE, get_profile, resolve_weight
from mmaudio.features import FeatureSet
from mmaudio.hashing import relpath
from mmaudio.model.network import get_network_preset
from mmaudio.training.train import Every, TrainInputs, TrainResult, feature_dir, fit

log = logging.getLogger(__name__)


def empty_string_path(params: Params) -> Path | None:
    """The file of the empty-string text features: ``train.empty_string``, else the weight profile's
    ``empty_string.pth``. A missing file is an error unless the profile allows starting from zeros
    (the tiny one: None), so that training on features made elsewhere needs no encoder weights."""
    if params.train.empty_string:
        path = Path(params.train.empty_string)
        if not path.is_file():
            raise FileNotFoundError(f"key 'train.empty_string': empty-string feature file {path} not found")
        return path
    profile = get_profile(params.profile)
    found = resolve_weight(profile, EMPTY_STRING_FILE, root=find_repo_root())
    if found is None and not profile.empty_string_optional:
        raise FileNotFoundError(
            f"the '{params.profile}' profile's {profile.root}/{EMPTY_STRING_FILE} is missing (or set train.empty_string)"
        )
    return found


def train_inputs(params: Params) -> TrainInputs:
    """The weight files the trainer reads, resolved (none when fine-tuning from ``train.weights``,
    which brings its own empty-string features)."""
    if params.train.weights:
        return TrainInputs()
    path = empty_string_path(params)
    if path is None:
        return TrainInputs()
    from mmaudio.encoders.clip import load_empty_string  # open_clip is imported only when needed

    return TrainInputs(load_empty_string(path), relpath(path, find_repo_root()), path)


def train_callbacks(params: Params, ctx: DistContext) -> list[Every]:
    """Audio samples (rank 0) and evaluation during training (every rank), in that order."""
    cfg = params.train
    callbacks: list[Every] = []
    if ctx.rank == 0 and cfg.datasets:  # no datasets: fit() says so, naming the key
        from mmaudio.evaluation.audio_samples import AudioSamples

        name = cfg.val_dataset or next(iter(cfg.datasets))  # the val set, else the first training set
        features = FeatureSet.open(feature_dir(params, name), mode=get_network_preset(cfg.network).mode)
        callbacks.append(Every(cfg.val_interval, AudioSamples(params, features, cfg.num_audio_samples, ctx.device)))
    if cfg.eval_interval > 0:
        from mmaudio.evaluation.evaluate import TrainingEvaluation  # sampling/scoring code only when asked

        callbacks.append(Every(cfg.eval_interval, TrainingEvaluation(params, ctx)))
    return callbacks


def train(params: Params, ctx: DistContext | None = None, *, halt_after_step: int | None = None) -> TrainResult:
    """Resolve the trainer's inputs, compose its callbacks and train (see :func:`mmaudio.training.train.fit`)."""
    ctx = ctx or DistContext(0, 1, 0, resolve_device(params.train.device))
    return fit(params, ctx, train_inputs(params), train_callbacks(params, ctx), halt_after_step=halt_after_step)
