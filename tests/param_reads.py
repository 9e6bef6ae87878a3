"""Which params.yaml keys a piece of code reads: every field access on the loaded config objects.

While :func:`recording` is active, each :class:`~mmaudio.config.Params` that ``load_params`` returns
carries the dotted path of every config object in it, and each access of a field that holds a value
(not a nested section) is recorded as a key, e.g. ``train.seed`` or ``video_datasets.examples_test.split``.

Reads from mmaudio/config.py (validation of the whole file) and mmaudio/tracking.py (the MLflow run
logs the whole config and reads ``tracking.*`` to find its store) are not counted: they do not change
what a stage computes.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mmaudio.config as config

_PATH = "_recorded_param_path"
_IGNORED_CALLERS = {str(Path(config.__file__).resolve()), str(Path(config.__file__).resolve().parent / "tracking.py"),
                    dataclasses.__file__}


def _config_classes() -> list[type]:
    return [c for c in vars(config).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
            and c.__module__ == config.__name__]


def _is_section(value: object) -> bool:
    if dataclasses.is_dataclass(value):
        return True
    return isinstance(value, dict) and any(dataclasses.is_dataclass(v) for v in value.values())


def _annotate(obj: object, prefix: str) -> None:
    object.__setattr__(obj, _PATH, prefix)  # test-only marker; not a field, so never logged or hashed
    for f in dataclasses.fields(obj):
        value = object.__getattribute__(obj, f.name)
        if dataclasses.is_dataclass(value):
            _annotate(value, f"{prefix}{f.name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                if dataclasses.is_dataclass(v):
                    _annotate(v, f"{prefix}{f.name}.{k}.")


@contextmanager
def recording() -> Iterator[set[str]]:
    """Yield the set that collects the keys read, until the block ends."""
    reads: set[str] = set()
    classes = _config_classes()
    fields = {c: {f.name for f in dataclasses.fields(c)} for c in classes}

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        if name in fields.get(type(self), ()) and not _is_section(value):
            prefix = object.__getattribute__(self, "__dict__").get(_PATH)
            if prefix is not None and sys._getframe(1).f_code.co_filename not in _IGNORED_CALLERS:
                reads.add(prefix + name)
        return value

    original_validate = config.validate

    def validate(*args, **kwargs):
        params = original_validate(*args, **kwargs)
        _annotate(params, "")
        return params

    for c in classes:
        c.__getattribute__ = getattribute
    config.validate = validate
    try:
        yield reads
    finally:
        config.validate = original_validate
        for c in classes:
            del c.__getattribute__


def undeclared(reads: set[str], declared: list[str]) -> list[str]:
    """Keys read that no declared key covers (a declared ``a.b`` covers ``a.b`` and ``a.b.*``)."""
    return sorted(r for r in reads if not any(r == d or r.startswith(d + ".") for d in declared))


def unread(reads: set[str], declared: list[str]) -> list[str]:
    """Declared keys under which nothing was read."""
    return [d for d in declared if not any(r == d or r.startswith(d + ".") for r in reads)]
