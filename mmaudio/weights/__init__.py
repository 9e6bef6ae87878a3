"""Weight files: safe reading and writing (:mod:`.io`), the manifest of every known file
(:mod:`.manifest`) and the one resolver and missing-file error (:mod:`.resolve`)."""

from mmaudio.weights.io import (
    WeightFileError,
    build_module,
    load_state_dict_strict,
    load_weight_file,
    save_weight_file,
)
from mmaudio.weights.manifest import WEIGHT_FILES, WeightSource, weight_source
from mmaudio.weights.resolve import MissingWeight, MissingWeightsError, hf_cache_file, resolve_file

__all__ = [
    "WEIGHT_FILES",
    "MissingWeight",
    "MissingWeightsError",
    "WeightFileError",
    "WeightSource",
    "build_module",
    "hf_cache_file",
    "load_state_dict_strict",
    "load_weight_file",
    "resolve_file",
    "save_weight_file",
    "weight_source",
]
