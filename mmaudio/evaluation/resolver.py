"""The evaluation extractors' weight files: their entries of the one manifest, found by the one resolver.

:data:`EVALUATION_WEIGHTS` is the ``evaluation`` part of :data:`mmaudio.weights.WEIGHT_FILES` (the
files av-benchmark's extractors load, with the sources their code names); :func:`resolve_weight` is
:func:`mmaudio.weights.resolve_file` (explicit path > ``ext_weights/<file>`` > local Hugging Face
cache > a download only with ``allow_download``), raising :class:`~mmaudio.weights.MissingWeightsError`.
"""

from __future__ import annotations

from mmaudio.weights.manifest import WEIGHT_FILES, WeightSource
from mmaudio.weights.resolve import DEFAULT_EXT_DIR, MissingWeightsError, resolve_file

EVALUATION_WEIGHTS: dict[str, WeightSource] = {n: s for n, s in WEIGHT_FILES.items() if s.group == "evaluation"}
resolve_weight = resolve_file

__all__ = ["DEFAULT_EXT_DIR", "EVALUATION_WEIGHTS", "MissingWeightsError", "WeightSource", "resolve_weight"]
