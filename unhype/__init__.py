"""UnHype: a hypernetwork reads a prompt's CLIP embedding and writes a LoRA that erases concepts.

Host-free core: prompt embedding -> `HyperNetwork` -> per-row factors -> `row_lora` hooks.
Nothing here imports ComfyUI.
"""

from .fileformat import UnHypeFileError, load_unhype, read_header, save_unhype
from .hypernet import Factors, HyperNetConfig, HyperNetwork, RowFactors, lora_norm
from .lora import row_lora, row_lora_delta
from .network import NetworkInfo, UnHypeNetwork
from .targets import (
    PRESETS,
    Target,
    TargetMismatchError,
    resolve_targets,
    targets_from_preset,
)

__all__ = [
    "PRESETS",
    "Factors",
    "HyperNetConfig",
    "HyperNetwork",
    "NetworkInfo",
    "RowFactors",
    "Target",
    "TargetMismatchError",
    "UnHypeFileError",
    "UnHypeNetwork",
    "load_unhype",
    "lora_norm",
    "read_header",
    "resolve_targets",
    "row_lora",
    "row_lora_delta",
    "save_unhype",
    "targets_from_preset",
]
