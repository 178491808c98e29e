"""Headless training: `python -m unhype train CONFIG` (TOML or JSON), the Trainer node's work.

The config has the Trainer node's fields plus where the model and ComfyUI are:

    model = "/models/v1-5-pruned-emaonly.safetensors"        # required: the model to train on
    concepts = ["tench -> fish", "church"]                   # required: one per item (or a string)
    comfyui_path = "~/ComfyUI"    # default: as unhype/discovery.py finds it ($COMFYUI_PATH, ...)
    output = "out/"               # folder of the final file (default: ComfyUI's models/unhype)

See workflows/train_config.example.toml for every field; unhype/headless_config.py reads and
checks the config. This module, the launch, never imports ComfyUI at import time:
`train_from_config` finds the ComfyUI checkout, puts it on sys.path (with --cpu when there is no
GPU), imports this pack as a package and calls `nodes/training/headless.py`, which trains with
the code the node runs, so the checkpoints and the final file are the same.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from . import discovery
from .choices import PROVING_GROUND
from .fileformat import FORMAT_NAME, looks_like_lora
from .files import cannot_write
from .headless_config import load_config
from .settings import ConfigError

PACK_MODULE = "comfyui_unhype"
CHECKPOINT_HINT = ("give a model checkpoint (diffusion model and text encoder in one file, such "
                   "as v1-5-pruned-emaonly.safetensors)")


def find_comfyui(configured: str | None = None) -> Path:
    """The config's ComfyUI checkout, else the first one unhype/discovery.py finds."""
    try:
        return discovery.find(configured)
    except discovery.ComfyUINotFound as error:
        raise ConfigError(f"{error}; or set comfyui_path in the config") from None


def check_model_file(model: str) -> None:
    """Refuse, before ComfyUI is imported, a model file that cannot be a checkpoint: missing,
    unreadable, a damaged .safetensors file, an UnHype network or a LoRA. ComfyUI judges the rest
    (nodes/training/headless.py)."""
    path = Path(model)
    if path.is_dir():
        raise ConfigError(f"model {model} is a folder: give the checkpoint file in it")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise ConfigError(f"model {model} does not exist") from None
    except OSError as error:
        raise ConfigError(f"model {model}: cannot read it ({error.strerror})") from None
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return  # ComfyUI reads other files with torch.load(weights_only=True)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata, names = handle.metadata() or {}, list(handle.keys())
    except Exception as error:  # safetensors raises its own error for a damaged header
        raise ConfigError(
            f"model {model}: not a readable .safetensors file ({str(error).splitlines()[0]}); "
            "it may be truncated or damaged: copy or download it again") from None
    if metadata.get("format") == FORMAT_NAME:
        raise ConfigError(f"model {model} is an UnHype network (what training writes), not a "
                          f"model to train on: {CHECKPOINT_HINT}")
    if names and all(looks_like_lora([name]) for name in names):  # every tensor a LoRA's
        raise ConfigError(f"model {model} is a LoRA, not a model checkpoint: {CHECKPOINT_HINT}")


def check_folders(config) -> None:
    """The configured output and checkpoint folders can be written to (made if missing)."""
    for key in ("output", "checkpoint_dir"):
        folder = getattr(config, key)
        reason = folder and cannot_write(folder)
        if reason:
            raise ConfigError(f"{key} {folder}: cannot write there ({reason}); pick a folder "
                              "you can write to")


def import_pack(comfyui: Path, device: str = "auto"):
    """Put ComfyUI first on sys.path and import this pack as the package `comfyui_unhype`.

    Our `nodes/` package must not shadow ComfyUI's `nodes.py`, so the pack root (the current
    directory under `python -m`) leaves sys.path. `--cpu` is chosen before ComfyUI's
    model_management is imported, which reads it once.
    """
    root = str(discovery.PACK_ROOT)
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != root]
    sys.path.insert(0, str(comfyui))
    loaded = sys.modules.get("nodes")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").parent != comfyui:
        raise ConfigError(f"a module named 'nodes' is already imported from {loaded.__file__}")
    # The core never imports ComfyUI statically; these run only on the headless path.
    importlib.import_module("comfy.options")  # ComfyUI then parses no command line of ours
    args = importlib.import_module("comfy.cli_args").args
    if "comfy.model_management" not in sys.modules:
        if device == "cpu":
            args.cpu = True
        elif device == "auto":
            import torch

            gpu = torch.cuda.is_available() or (
                getattr(torch.backends, "mps", None) is not None
                and torch.backends.mps.is_available())
            args.cpu = not gpu
        elif device == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device = 'gpu' but PyTorch sees no CUDA GPU: use 'auto' or "
                                  "'cpu'")
    return load_package(PACK_MODULE, Path(root))


def load_package(name: str, root: Path):
    """Import `root/__init__.py` as package `name`, as ComfyUI loads a custom node folder.

    Imported once; a failed import leaves nothing behind in sys.modules.
    """
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, Path(root) / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def train_from_config(path: str | os.PathLike) -> str:
    """Train as the config says, printing progress; returns the path of the written file.

    Under `torchrun --nproc_per_node N`, the N processes train data-parallel (gloo on CPU, NCCL
    on GPUs, one GPU per process); process 0 prints, writes the checkpoints and the file."""
    config = load_config(path)
    if config.model != PROVING_GROUND:
        check_model_file(config.model)
    check_folders(config)
    comfyui = find_comfyui(config.comfyui_path)
    group = _join_processes(config.device)
    try:
        import_pack(comfyui, config.device)
        training = importlib.import_module(f"{PACK_MODULE}.nodes.training.headless")
    except ImportError as error:
        raise ConfigError(
            f"the ComfyUI at {comfyui} cannot be imported by this Python ({sys.executable}): "
            f"{error}. Run with the Python that has ComfyUI's requirements (pip install -r "
            f"{comfyui / 'requirements.txt'})") from None
    # the pack imports its own copy of this core: its errors are its own classes
    settings_error = importlib.import_module(f"{PACK_MODULE}.unhype.settings").ConfigError
    write_error = importlib.import_module(f"{PACK_MODULE}.unhype.files").FileWriteError
    rank = 0 if group is None else group.rank()
    try:
        outcome = training.train_headless(
            config, log=lambda line: rank == 0 and print(line, flush=True), group=group)
    except settings_error as error:
        raise ConfigError(str(error)) from None
    except write_error as error:
        raise ConfigError(f"{error}: make room there, or set output and checkpoint_dir in the "
                          "config to a folder with space that you can write to") from None
    finally:
        if group is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    return outcome.path


def _join_processes(device: str):
    """The default process group when started by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    gpu = device != "cpu" and torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if gpu else "gloo")
    return dist.group.WORLD
