"""A network preset smaller than tiny (hidden 16) for CPU tests: hundreds of steps take seconds."""

from mmaudio.model.network import NETWORK_PRESETS, NetworkPreset

MICRO = NetworkPreset(name="micro_16k", mode="16k", num_heads=1, head_dim=16, depth=2, fused_depth=1)


def register() -> None:
    NETWORK_PRESETS.setdefault(MICRO.name, MICRO)


class NullRun:
    """Stands in for mmaudio.tracking.StageRun where mlflow is not installed (GPU test machines)."""

    def __init__(self, *args, **kwargs):
        self.run_id, self.hashes = None, {}

    def __enter__(self) -> "NullRun":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __getattr__(self, name):  # log_metrics, log_params, set_tags, log_outputs, log_artifact
        return lambda *args, **kwargs: {}
