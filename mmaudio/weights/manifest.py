"""Every weight file the project knows: its name, what uses it, where it comes from, its size and
checksum where known. The encoders' official files (profile ``official``), the network checkpoints
upstream publishes, and the av-benchmark extractors' files are all listed here, once.

Checksums come from the code that publishes or loads the file (MMAudio ``mmaudio/utils/download_utils.py``
for its releases; torch.hub's hash-in-the-name convention for VGGish). No upstream code states sizes,
so they are left unknown (None) rather than guessed. The ``tiny`` profile's files have no entry: the
``tiny_weights`` stage writes them (:mod:`mmaudio.encoders.profiles` says so when one is absent).
"""

from __future__ import annotations

from dataclasses import dataclass

MMAUDIO_RELEASE_URL = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1"
MMAUDIO_HF_URL = "https://huggingface.co/hkchengrex/MMAudio/resolve/main/weights"
_MMAUDIO_MD5 = "MMAudio mmaudio/utils/download_utils.py"


@dataclass(frozen=True)
class WeightSource:
    filename: str  # a file name, or a folder name for a Hugging Face snapshot (CLIP, BigVGAN-v2)
    used_for: str  # what needs it
    url: str | None = None
    hf_repo: str | None = None
    hf_filename: str | None = None  # the file's path inside hf_repo, when it differs from filename
    size: int | None = None  # bytes; None where no upstream code states it
    md5: str | None = None
    sha256_prefix: str | None = None  # torch.hub convention: the hex digits after the last '-' in the name
    upstream: str = ""  # where upstream names this file
    group: str = "evaluation"  # encoders (profile official) | network | evaluation


def _release(name: str, used_for: str, md5: str | None, group: str = "encoders") -> WeightSource:
    return WeightSource(filename=name, used_for=used_for, url=f"{MMAUDIO_RELEASE_URL}/{name}", md5=md5,
                        upstream=_MMAUDIO_MD5 if md5 else "MMAudio README (ext_weights)", group=group)


def _network(name: str, md5: str) -> WeightSource:
    return WeightSource(filename=name, used_for="flow network (train.weights: fine-tuning)",
                        url=f"{MMAUDIO_HF_URL}/{name}", md5=md5, upstream=_MMAUDIO_MD5, group="network")


WEIGHT_FILES: dict[str, WeightSource] = {
    source.filename: source
    for source in (
        # -- encoders, profile official (ext_weights/) --
        _release("v1-16.pth", "16 kHz audio VAE", "69f56803f59a549a1a507c93859fd4d7"),
        _release("v1-44.pth", "44.1 kHz audio VAE", "fab020275fa44c6589820ce025191600"),
        _release("best_netG.pt", "16 kHz BigVGAN vocoder", "eeaf372a38a9c31c362120aba2dde292"),
        _release("synchformer_state_dict.pth",
                 "Synchformer visual features (extraction) and DeSync (evaluation)", "5b2f5594b0730f70e41e549b7c94390c"),
        _release("empty_string.pth", "text features of '' (CFG's null text)", None),
        WeightSource(filename="DFN5B-CLIP-ViT-H-14-384", used_for="CLIP image and text features (open_clip)",
                     hf_repo="apple/DFN5B-CLIP-ViT-H-14-384", upstream="MMAudio mmaudio/model/utils/features_utils.py:49",
                     group="encoders"),
        WeightSource(filename="bigvgan_v2_44khz_128band_512x", used_for="44.1 kHz BigVGAN-v2 vocoder",
                     hf_repo="nvidia/bigvgan_v2_44khz_128band_512x", upstream="MMAudio mmaudio/ext/autoencoder/autoencoder.py:30",
                     group="encoders"),
        # -- network checkpoints (train.weights) --
        _network("mmaudio_small_16k.pth", "af93cde404179f58e3919ac085b8033b"),
        _network("mmaudio_small_44k.pth", "babd74c884783d13701ea2820a5f5b6d"),
        _network("mmaudio_medium_44k.pth", "5a56b6665e45a1e65ada534defa903d0"),
        _network("mmaudio_large_44k.pth", "fed96c325a6785b85ce75ae1aafd2673"),
        _network("mmaudio_large_44k_v2.pth", "01ad4464f049b2d7efdaa4c1a59b8dfe"),
        # -- av-benchmark extractors (evaluate.extractor_dir) --
        WeightSource(
            filename="Cnn14_16k_mAP=0.438.pth",
            used_for="FD-PANN, KL-PANNS, ISC-PANNS (PANNs Cnn14 at 16 kHz; state dict under 'model')",
            url="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
            upstream="av-benchmark av_bench/panns/models.py:244-253",
        ),
        WeightSource(
            filename="vggish-10086976.pth",
            used_for="FD-VGG (VGGish, no PCA postprocessing)",
            url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
            sha256_prefix="10086976",
            upstream="av-benchmark av_bench/vggish/vggish.py:54 -> harritaylor/torchvggish hubconf.py",
        ),
        WeightSource(
            filename="passt-s-f128-p16-s10-ap.476-swa.pt",
            used_for="FD-PaSST, KL-PASST, ISC-PASST (PaSST passt_s_swa_p16_128_ap476)",
            url=(
                "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
                "passt-s-f128-p16-s10-ap.476-swa.pt"
            ),
            upstream=(
                "av-benchmark av_bench/extraction_models.py:42 -> hear21passt base.py get_basic_model -> "
                "models/passt.py default_cfgs"
            ),
        ),
        WeightSource(
            filename="imagebind_huge.pth",
            used_for="IB-score (ImageBind huge)",
            url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
            upstream=(
                "av-benchmark av_bench/extraction_models.py:45 -> "
                "hkchengrex/ImageBind imagebind_model.imagebind_huge"
            ),
        ),
        WeightSource(
            filename="music_speech_audioset_epoch_15_esc_89.98.pt",
            used_for="LAION-CLAP score (HTSAT-base, no fusion)",
            url="https://huggingface.co/lukewys/laion_clap/resolve/main/music_speech_audioset_epoch_15_esc_89.98.pt",
            hf_repo="lukewys/laion_clap",
            upstream="av-benchmark README (Download Pretrained Models), av_bench/extraction_models.py:15-16,47-48",
        ),
        WeightSource(
            filename="CLAP_weights_2023.pth",
            used_for="MS-CLAP score (msclap version '2023')",
            hf_repo="microsoft/msclap",
            upstream="av-benchmark av_bench/extraction_models.py:50 -> msclap CLAPWrapper.model_repo, model_name",
        ),
    )
}


def weight_source(name: str) -> WeightSource | None:
    return WEIGHT_FILES.get(name)
