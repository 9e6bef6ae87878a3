"""BigVGAN vocoders: mel spectrogram (B, n_mels, T) -> waveform (B, 1, T * hop_length).

Two official models are used by MMAudio:

- ``16k``: the 16 kHz BigVGAN trained for Make-An-Audio 2 (80 mels, hop 256), one file
  ``best_netG.pt`` holding ``{'generator': state_dict}``.
- ``44k_v2``: NVIDIA's BigVGAN-v2 ``nvidia/bigvgan_v2_44khz_128band_512x`` (128 mels, hop 512), a
  directory (a Hugging Face snapshot) with ``config.json`` and ``bigvgan_generator.pt`` holding
  ``{'generator': state_dict}``.

Both files store every convolution with weight normalisation in the layout of
``torch.nn.utils.weight_norm`` (``<conv>.weight_g`` magnitude per output slice, ``<conv>.weight_v``
direction) and carry the anti-aliasing filter taps as buffers. Our layers keep exactly that layout
so the files load with ``strict=True``; files written by newer code with
``torch.nn.utils.parametrizations.weight_norm`` (``parametrizations.weight.original0/1``) are
renamed on load. :func:`load_vocoder` folds the weight norm away, as inference wants.

The output is the raw generator output, shape (B, 1, T * hop_length), bounded to [-1, 1]: by tanh
for ``16k``, by clamping for ``44k_v2`` (its config sets ``use_tanh_at_final: false``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmaudio.encoders.alias_free import Activation1d, SnakeBeta
from mmaudio.weights import WeightFileError, load_state_dict_strict, load_weight_file, save_weight_file
from mmaudio.weights.manifest import WEIGHT_FILES
from mmaudio.weights.resolve import hf_cache_file, hf_cache_location

HF_REPO_44K = WEIGHT_FILES["bigvgan_v2_44khz_128band_512x"].hf_repo
HF_WEIGHTS_NAME = "bigvgan_generator.pt"  # file names inside a BigVGAN-v2 directory
HF_CONFIG_NAME = "config.json"
CHECKPOINT_KEY = "generator"  # both official files nest the state dict under this entry

WeightsLayout = Literal["file", "hf_dir"]


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BigVGANConfig:
    """Generator hyperparameters, named as in BigVGAN's config files."""

    num_mels: int
    sampling_rate: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    activation: Literal["snake", "snakebeta"] = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = True  # BigVGAN-v2's default when a config.json omits the key
    use_bias_at_final: bool = True
    resblock: Literal["1"] = "1"  # AMP block with a dilated and an undilated conv per dilation

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(f"upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                             f"{self.upsample_kernel_sizes} differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(f"resblock_kernel_sizes {self.resblock_kernel_sizes} and resblock_dilation_sizes "
                             f"{self.resblock_dilation_sizes} differ in length")
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernel_sizes):
            # with padding (k - u) // 2 a transposed conv gives exactly T * u samples only if k - u is even
            if (kernel - rate) % 2:
                raise ValueError(f"upsample kernel {kernel} and rate {rate}: kernel - rate must be even")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError(f"upsample_initial_channel {self.upsample_initial_channel} is halved "
                             f"{len(self.upsample_rates)} times and must stay an integer")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if self.resblock != "1":
            raise ValueError(f"only resblock '1' (the one every official BigVGAN uses) is implemented, "
                             f"got {self.resblock!r}")

    @property
    def hop_length(self) -> int:
        """Waveform samples per mel frame."""
        return math.prod(self.upsample_rates)

    def to_json_dict(self) -> dict[str, Any]:
        """The keys BigVGAN-v2's ``config.json`` uses (plus ``hop_size``, as the official file has)."""
        out: dict[str, Any] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        out["resblock_dilation_sizes"] = [list(d) for d in self.resblock_dilation_sizes]
        out["hop_size"] = self.hop_length
        return out

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], *, source: str | os.PathLike) -> BigVGANConfig:
        """Build from a BigVGAN ``config.json``; training-only keys (discriminator, loss) are ignored."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise WeightFileError(f"config {source} lacks the generator keys {missing}")
        kwargs: dict[str, Any] = {}
        for key in names & set(data):
            value = data[key]
            if key == "resblock_dilation_sizes":
                value = tuple(tuple(int(d) for d in group) for group in value)
            elif isinstance(value, list):
                value = tuple(int(v) for v in value)
            kwargs[key] = value
        try:
            config = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise WeightFileError(f"config {source} is not a usable BigVGAN generator config: {e}") from e
        if "hop_size" in data and int(data["hop_size"]) != config.hop_length:
            raise WeightFileError(f"config {source}: hop_size {data['hop_size']} is not the product of "
                                  f"upsample_rates {config.upsample_rates} = {config.hop_length}")
        return config


@dataclass(frozen=True)
class VocoderPreset:
    """A generator config plus how its weights are stored."""

    config: BigVGANConfig
    layout: WeightsLayout  # 'file': one .pt file; 'hf_dir': a directory with config.json + bigvgan_generator.pt
    hf_repo_id: str | None = None  # where the official directory comes from (read from the local HF cache only)
    official_file: str | None = None  # the upstream file (mmaudio.weights.manifest) this preset's layout matches


_AMP_3X3 = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

PRESETS: dict[str, VocoderPreset] = {
    # Make-An-Audio 2's bigvgan_vocoder.yml
    "16k": VocoderPreset(
        BigVGANConfig(
            num_mels=80, sampling_rate=16_000,
            upsample_rates=(4, 4, 2, 2, 2, 2), upsample_kernel_sizes=(8, 8, 4, 4, 4, 4),
            upsample_initial_channel=1536,
            resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=_AMP_3X3,
            activation="snakebeta", snake_logscale=True, use_tanh_at_final=True, use_bias_at_final=True,
        ),
        layout="file",
        official_file="best_netG.pt",
    ),
    # config.json of nvidia/bigvgan_v2_44khz_128band_512x
    "44k_v2": VocoderPreset(
        BigVGANConfig(
            num_mels=128, sampling_rate=44_100,
            upsample_rates=(8, 4, 2, 2, 2, 2), upsample_kernel_sizes=(16, 8, 4, 4, 4, 4),
            upsample_initial_channel=1536,
            resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=_AMP_3X3,
            activation="snakebeta", snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False,
        ),
        layout="hf_dir",
        hf_repo_id=HF_REPO_44K,
    ),
    # Tiny: same mels, sample rate and hop (so T frames -> T * hop samples as above), a few channels.
    "tiny_16k": VocoderPreset(
        BigVGANConfig(
            num_mels=80, sampling_rate=16_000,
            upsample_rates=(4, 4, 4, 4), upsample_kernel_sizes=(8, 8, 8, 8),
            upsample_initial_channel=32,
            resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
            activation="snakebeta", snake_logscale=True, use_tanh_at_final=True, use_bias_at_final=True,
        ),
        layout="file",
    ),
    "tiny_44k": VocoderPreset(
        BigVGANConfig(
            num_mels=128, sampling_rate=44_100,
            upsample_rates=(8, 4, 4, 4), upsample_kernel_sizes=(16, 8, 8, 8),
            upsample_initial_channel=32,
            resblock_kernel_sizes=(3, 5), resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
            activation="snakebeta", snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False,
        ),
        layout="hf_dir",
    ),
}


def get_preset(name: str) -> VocoderPreset:
    if name not in PRESETS:
        raise KeyError(f"unknown vocoder preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


# ----------------------------------------------------------------------------- layers


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    """L2 norm of each slice along dim 0, kept broadcastable: (D0, ...) -> (D0, 1, ..., 1)."""
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)


class _WeightNormed:
    """Mixin for conv layers whose weight is stored as magnitude ``weight_g`` and direction ``weight_v``.

    weight = weight_v * weight_g / ||weight_v||, the norm taken over every dim but 0 (as
    ``torch.nn.utils.weight_norm(dim=0)``; for a transposed conv dim 0 is the input channel).
    """

    def _split_weight(self) -> None:
        weight = self.weight.detach()
        del self.weight  # from here on the weight is derived from (g, v)
        self.weight_g = nn.Parameter(_norm_except_dim0(weight))
        self.weight_v = nn.Parameter(weight)

    @property
    def has_weight_norm(self) -> bool:
        return "weight_v" in self._parameters

    def folded_weight(self) -> torch.Tensor:
        if self.has_weight_norm:
            return self.weight_v * (self.weight_g / _norm_except_dim0(self.weight_v))
        return self.weight

    def remove_weight_norm(self) -> None:
        """Replace (weight_g, weight_v) by the plain ``weight`` they define; a no-op once done."""
        if not self.has_weight_norm:
            return
        weight = self.folded_weight().detach()
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(weight)


class WNConv1d(_WeightNormed, nn.Conv1d):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.folded_weight(), self.bias)


class WNConvTranspose1d(_WeightNormed, nn.ConvTranspose1d):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.folded_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


def _snake(config: BigVGANConfig, channels: int) -> Activation1d:
    act = SnakeBeta(channels, beta=config.activation == "snakebeta", logscale=config.snake_logscale)
    return Activation1d(act)


class AMPBlock1(nn.Module):
    """Anti-aliased multi-periodicity block: per dilation, act -> dilated conv -> act -> conv, residual."""

    def __init__(self, config: BigVGANConfig, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        # interleaved: activations[2i] precedes convs1[i], activations[2i + 1] precedes convs2[i]
        self.activations = nn.ModuleList(_snake(config, channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C, T)
        for i, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2)):
            h = conv1(self.activations[2 * i](x))
            h = conv2(self.activations[2 * i + 1](h))
            x = h + x
        return x


class BigVGAN(nn.Module):
    """BigVGAN generator. forward: mel (B, num_mels, T) -> waveform (B, 1, T * hop_length) in [-1, 1]."""

    def __init__(self, config: BigVGANConfig):
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = WNConv1d(config.num_mels, c0, 7, padding=3)
        # each stage halves the channels; ModuleList of one keeps the official key 'ups.<i>.0.*'
        self.ups = nn.ModuleList(
            nn.ModuleList([WNConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
        )
        # flat list, stage i owns resblocks[i * n_kernels : (i + 1) * n_kernels]
        self.resblocks = nn.ModuleList(
            AMPBlock1(config, c0 // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
        c_last = c0 // 2 ** len(self.ups)
        self.activation_post = _snake(config, c_last)
        self.conv_post = WNConv1d(c_last, 1, 7, padding=3, bias=config.use_bias_at_final)
        # Weights keep PyTorch's default conv init; upstream's normal(0, 0.01) re-init writes into the
        # derived weight tensor once weight norm is applied, so it never reaches the parameters.

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def has_weight_norm(self) -> bool:
        return any(m.has_weight_norm for m in self.modules() if isinstance(m, _WeightNormed))

    def remove_weight_norm(self) -> BigVGAN:
        """Fold every (weight_g, weight_v) pair into a plain weight; inference then skips the norm."""
        for m in self.modules():
            if isinstance(m, _WeightNormed):
                m.remove_weight_norm()
        return self

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, n_mels, T) -> (B, 1, T * hop)
        if mel.dim() != 3 or mel.shape[1] != self.config.num_mels:
            raise ValueError(f"BigVGAN expects a mel of shape (B, {self.config.num_mels}, T), got {tuple(mel.shape)}")
        n_kernels = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(mel)  # (B, C0, T)
        for i, (up,) in enumerate(self.ups):
            x = up(x)  # (B, C0 / 2^(i+1), T * prod(rates[:i+1]))
            # average of the parallel AMP blocks (one per kernel size)
            xs = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                xs = xs + self.resblocks[i * n_kernels + j](x)
            x = xs / n_kernels
        x = self.conv_post(self.activation_post(x))  # (B, 1, T * hop)
        if self.config.use_tanh_at_final:
            return torch.tanh(x)
        return torch.clamp(x, min=-1.0, max=1.0)


# ----------------------------------------------------------------------------- build / load / save


def build_vocoder(preset: str | BigVGANConfig, *, seed: int | None = None) -> BigVGAN:
    """A randomly initialised generator, weight norm still applied (the layout files are saved in).

    With ``seed`` the init is reproducible and leaves the global RNG untouched.
    """
    config = get_preset(preset).config if isinstance(preset, str) else preset
    if seed is None:
        return BigVGAN(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BigVGAN(config)


def _to_legacy_weight_norm_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``parametrizations.weight.original0/1`` (new torch weight norm) to ``weight_g/weight_v``."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        renamed[key] = value
    return renamed


def official_state_dict(model: BigVGAN) -> dict[str, torch.Tensor]:
    """State dict in the official layout (with weight norm) even after the norm was folded away.

    A folded weight w is written back as g = ||w||, v = w, which defines the same weight.
    """
    folded = {name for name, m in model.named_modules() if isinstance(m, _WeightNormed) and not m.has_weight_norm}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "weight" and prefix in folded:
            out[f"{prefix}.weight_g"] = _norm_except_dim0(value)
            out[f"{prefix}.weight_v"] = value
        else:
            out[key] = value
    return out


def _read_config_json(path: Path) -> BigVGANConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightFileError(f"cannot read BigVGAN config {path}: {e}") from e
    if not isinstance(data, dict):
        raise WeightFileError(f"BigVGAN config {path} is not a JSON object")
    return BigVGANConfig.from_json_dict(data, source=path)


def _check_contract(config: BigVGANConfig, expected: BigVGANConfig, *, preset: str, source: Path) -> None:
    """A directory's config.json may change widths, never what the rest of the pipeline relies on."""
    for name in ("num_mels", "sampling_rate", "hop_length"):
        got, want = getattr(config, name), getattr(expected, name)
        if got != want:
            raise WeightFileError(f"vocoder config {source} has {name}={got}, but preset {preset!r} needs {want}")


def _missing_44k_message(preset_name: str, repo_id: str | None, looked_at: str) -> str:
    where = (
        f"Download the Hugging Face repo '{repo_id}' (files {HF_CONFIG_NAME} and {HF_WEIGHTS_NAME}) into the "
        f"Hugging Face cache (`hf download {repo_id}`) or into a directory of your own and pass "
        f"that directory."
        if repo_id
        else "Write it with save_vocoder(build_vocoder(...), <directory>)."
    )
    return f"BigVGAN vocoder {preset_name!r} not found: {looked_at}. {where}"


def _resolve_hf_dir(path_or_dir: str | os.PathLike | None, preset_name: str, preset: VocoderPreset,
                    cache_dir: str | os.PathLike | None) -> Path:
    if path_or_dir is not None:
        directory = Path(path_or_dir)
        if not (directory / HF_WEIGHTS_NAME).is_file():
            looked_at = (f"no directory {directory}" if not directory.is_dir()
                         else f"directory {directory} has no {HF_WEIGHTS_NAME}")
            raise FileNotFoundError(_missing_44k_message(preset_name, preset.hf_repo_id, looked_at))
        return directory
    if preset.hf_repo_id is None:
        raise ValueError(f"preset {preset_name!r} has no Hugging Face repo: pass the directory to load from")
    # Reads the local cache only (never the network); honours HF_HOME / HF_HUB_CACHE.
    cached = hf_cache_file(preset.hf_repo_id, [HF_WEIGHTS_NAME], cache_dir)
    if cached is None:
        looked_at = f"not in the Hugging Face cache {hf_cache_location(cache_dir)}"
        raise FileNotFoundError(_missing_44k_message(preset_name, preset.hf_repo_id, looked_at))
    return cached.parent


def load_vocoder(
    path_or_dir: str | os.PathLike | None,
    preset: str = "16k",
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> BigVGAN:
    """Load a vocoder for inference: strict key check, weight norm folded away, eval mode, frozen.

    ``16k`` / ``tiny_16k``: ``path_or_dir`` is the weight file (``best_netG.pt``).
    ``44k_v2`` / ``tiny_44k``: ``path_or_dir`` is a directory with ``bigvgan_generator.pt`` and
    (optionally) ``config.json``, whose generator keys take precedence over the preset as long as
    mels, sample rate and hop agree. For ``44k_v2``, ``None`` means the snapshot of
    ``nvidia/bigvgan_v2_44khz_128band_512x`` in the local Hugging Face cache (``cache_dir`` or
    ``$HF_HUB_CACHE``); nothing is downloaded.
    """
    spec = get_preset(preset)
    config = spec.config
    if spec.layout == "file":
        if path_or_dir is None:
            raise ValueError(f"preset {preset!r} needs the path of its weight file")
        weights_file = Path(path_or_dir)
        if not weights_file.is_file():
            source = WEIGHT_FILES.get(spec.official_file) if spec.official_file else None
            hint = f" (the official file is {source.url})" if source is not None and source.url else ""
            raise FileNotFoundError(f"BigVGAN weight file not found: {weights_file}{hint}")
    else:
        directory = _resolve_hf_dir(path_or_dir, preset, spec, cache_dir)
        weights_file = directory / HF_WEIGHTS_NAME
        config_file = directory / HF_CONFIG_NAME
        if config_file.is_file():
            config = _read_config_json(config_file)
            _check_contract(config, spec.config, preset=preset, source=config_file)

    state_dict = _to_legacy_weight_norm_names(load_weight_file(weights_file, subkey=CHECKPOINT_KEY))
    with torch.device("meta"):  # skip a random init that the checkpoint overwrites anyway
        model = BigVGAN(config)
    if "conv_pre.weight" in state_dict:  # a checkpoint saved after folding the weight norm
        model.remove_weight_norm()
    model = model.to_empty(device=device)
    load_state_dict_strict(model, state_dict, source=weights_file)
    return model.remove_weight_norm().eval().requires_grad_(False)


def save_vocoder(model: BigVGAN, path: str | os.PathLike, *, layout: WeightsLayout | None = None) -> Path:
    """Write ``model`` in an official format, readable by :func:`load_vocoder` and by upstream.

    ``layout='file'`` writes ``{'generator': state_dict}`` to ``path`` (like ``best_netG.pt``);
    ``layout='hf_dir'`` makes ``path`` a directory with ``bigvgan_generator.pt`` and ``config.json``
    (like the BigVGAN-v2 Hugging Face repo). By default an existing directory or a path without a
    suffix is a directory, anything else (``best_netG.pt``) a file. Returns the weight file written.
    """
    path = Path(path)
    layout = layout or ("hf_dir" if path.is_dir() or not path.suffix else "file")
    checkpoint = {CHECKPOINT_KEY: {k: v.detach().cpu().contiguous() for k, v in official_state_dict(model).items()}}
    if layout == "file":
        return save_weight_file(checkpoint, path)
    path.mkdir(parents=True, exist_ok=True)
    weights_file = save_weight_file(checkpoint, path / HF_WEIGHTS_NAME)
    tmp = path / f".{HF_CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(model.config.to_json_dict(), indent=4) + "\n")
    os.replace(tmp, path / HF_CONFIG_NAME)  # atomic, like the weight file
    return weights_file
