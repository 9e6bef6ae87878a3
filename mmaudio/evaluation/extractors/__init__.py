"""Audio feature extractors of av-benchmark, computed in-project: PANNs Cnn14, VGGish, PaSST.

Each takes any waveform at any sample rate through ``model.extract(wave, sample_rate)``, which
prepares it exactly as av-benchmark does (audio_frontend) and returns a dict of float32 tensors:

    PANNs   {"embedding": (B, 2048), "logits": (B, 527)}   16 kHz, 8 s
    VGGish  {"embedding": (B, 8, 128)}                     16 kHz, 8 s -> eight 0.96 s examples
    PaSST   {"embedding": (B, 768), "logits": (B, 527)}    32 kHz, 8 s zero-padded to 10 s

Each reads and writes its official weight file format (``load_*`` / ``save_*``) and has an
``official`` and a ``tiny`` preset with the same outputs.
"""

from mmaudio.evaluation.extractors.panns import (
    PANNS_PRESETS,
    Cnn14,
    PannsPreset,
    build_panns,
    load_panns,
    save_panns,
)
from mmaudio.evaluation.extractors.passt import (
    PASST_PRESETS,
    Passt,
    PasstPreset,
    build_passt,
    load_passt,
    save_passt,
)
from mmaudio.evaluation.extractors.vggish import (
    VGGISH_PRESETS,
    Vggish,
    VggishPreset,
    build_vggish,
    load_vggish,
    save_vggish,
)

__all__ = [
    "PANNS_PRESETS", "Cnn14", "PannsPreset", "build_panns", "load_panns", "save_panns",
    "PASST_PRESETS", "Passt", "PasstPreset", "build_passt", "load_passt", "save_passt",
    "VGGISH_PRESETS", "Vggish", "VggishPreset", "build_vggish", "load_vggish", "save_vggish",
]
