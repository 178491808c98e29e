"""UnHype: a hypernetwork reads a prompt's CLIP embedding and writes a LoRA that erases concepts.

Host-free core: prompt embedding -> `HyperNetwork` -> per-row factors -> `row_lora` hooks.
Nothing here imports ComfyUI.
"""

from importlib import import_module

# Exported names and their modules, imported on first use: `python -m unhype --help` and the
# command line's argument errors answer without loading torch.
_EXPORTS = {
    "fileformat": ("UnHypeFileError", "load_unhype", "read_header", "save_unhype"),
    "hypernet": ("Factors", "HyperNetConfig", "HyperNetwork", "RowFactors", "lora_norm"),
    "lora": ("row_lora", "row_lora_delta"),
    "network": ("NetworkInfo", "UnHypeNetwork"),
    "targets": ("TARGET_PRESETS", "Target", "TargetMismatchError", "resolve_targets",
                "targets_from_preset"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_MODULE_OF)
