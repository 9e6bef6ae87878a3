"""What the model tests share: official key layouts checked against tests/fixtures/keys/, parameter
counts of models built on the meta device, one-thread runs, and the tiny model and weight file each
model's tests build once and then corrupt in small, named ways."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

from mmaudio.weights import save_weight_file

KEYS_DIR = Path(__file__).parent / "fixtures" / "keys"

ModelT = TypeVar("ModelT", bound=nn.Module)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models and short clips: one thread is fastest on a shared 2-core machine.

    Autouse: a test module (or conftest) that imports it runs each of its tests on one thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- key layouts ----

def load_manifest(name: str) -> dict[str, list[int]]:
    """The official {key: shape} manifest tests/fixtures/keys/<name>.json."""
    return json.loads((KEYS_DIR / f"{name}.json").read_text())


def key_shapes(model: nn.Module) -> dict[str, list[int]]:
    """{key: shape} of the model's state dict, in the manifests' JSON form."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def assert_keys_match(model: nn.Module, expected: Mapping[str, list[int]]) -> None:
    """The model's state dict has exactly the expected keys, each of the expected shape."""
    ours = key_shapes(model)
    # extra and missing keys first, each as a sorted list, so a failure names them
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: ours[k] for k in expected} == expected


def assert_matches_manifest(model: nn.Module, name: str, num_keys: int) -> None:
    """The model's keys and shapes are exactly those of manifest ``name``, which holds ``num_keys`` keys."""
    expected = load_manifest(name)
    assert len(expected) == num_keys  # the fixture itself is the one the counts were taken from
    assert_keys_match(model, expected)


# ---- parameter counts ----

def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def num_state_elements(model: nn.Module) -> int:
    """Elements of every state-dict entry: parameters and buffers (e.g. BatchNorm statistics)."""
    return sum(v.numel() for v in model.state_dict().values())


def assert_frozen_with_params(model: nn.Module, count: int) -> None:
    """Exactly ``count`` parameters, none of them trainable (feature extractors are frozen)."""
    assert num_params(model) == count
    assert not any(p.requires_grad for p in model.parameters())


# ---- tiny weights ----

def tiny_model_fixtures(
    build: Callable[..., ModelT], save: Callable[[ModelT, Path], Path], file_name: str,
) -> tuple[Any, Any]:
    """Module-scoped fixtures ``tiny`` (``build("tiny", seed=0)``) and ``tiny_file`` (it, saved by
    ``save`` under its official ``file_name`` in a fresh folder, so the folder can serve as ext_dir).

    Use as ``tiny, tiny_file = tiny_model_fixtures(build_x, save_x, "x.pth")`` at module level.
    """

    @pytest.fixture(scope="module", name="tiny")
    def tiny_fixture() -> ModelT:
        return build("tiny", seed=0)

    @pytest.fixture(scope="module", name="tiny_file")
    def tiny_file_fixture(tiny: ModelT, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return save(tiny, tmp_path_factory.mktemp("tiny_weights") / file_name)

    return tiny_fixture, tiny_file_fixture


def save_without(state: Mapping[str, torch.Tensor], key: str, path: Path) -> Path:
    """Writes ``state`` less ``key`` (which it must hold) to ``path``: a file missing one entry."""
    assert key in state, key  # else the file would not be missing anything
    return save_weight_file({k: v for k, v in state.items() if k != key}, path)


def save_with(state: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Writes ``state`` with the entries of ``extra`` added or replaced to ``path``."""
    return save_weight_file({**state, **extra}, path)
