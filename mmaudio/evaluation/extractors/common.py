"""What every evaluation extractor does the same way with its official weight file.

:func:`load_extractor` finds the file (:func:`~mmaudio.evaluation.resolver.resolve_weight`), reads its
state dict and loads it strictly into a model built on the meta device; :func:`save_extractor` writes a
model's state dict flat or under the official file's top-level key. The readers differ per model (a
nested key, entries set aside), so each extractor passes its own ``read``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from mmaudio.evaluation.resolver import resolve_weight
from mmaudio.weights import load_state_dict_strict, load_weight_file, save_weight_file

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def load_extractor(
    file_name: str,
    factory: Callable[[], ModuleT],
    *,
    path: str | os.PathLike | None,
    ext_dir: str | os.PathLike,
    allow_download: bool,
    device: str | torch.device,
    read: Callable[[Path], dict[str, torch.Tensor]] = load_weight_file,
) -> ModuleT:
    """``factory()`` holding the weights of ``read(path)``, loaded strictly, on ``device``, in eval mode.

    ``path=None`` resolves ``file_name`` (``ext_dir/<file_name>``, the Hugging Face cache, a download
    only with ``allow_download``); a missing file raises :class:`~mmaudio.evaluation.resolver.MissingWeightsError`.
    """
    path = resolve_weight(file_name, explicit=path, ext_dir=ext_dir, allow_download=allow_download)
    state_dict = read(path)
    with torch.device("meta"):
        model = factory()
    # every tensor (buffers and fixed front-end matrices too) comes from the file: no random init first
    model.to_empty(device="cpu")
    load_state_dict_strict(model, state_dict, source=path)
    return model.to(device).eval()


def save_extractor(model: nn.Module, path: str | os.PathLike, *, subkey: str | None = None) -> Path:
    """Write ``model``'s state dict (detached, on the CPU) as a flat dict, or as ``{subkey: state_dict}``."""
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_weight_file(state_dict if subkey is None else {subkey: state_dict}, path)
