"""UnHype's test harness: a real ComfyUI checkout, in this process and as a server.

Nothing here is part of the pack. One module per job: `comfyui` (find and import ComfyUI, CPU
only), `pack` (load the pack as ComfyUI does, run its nodes), `tiny_models` (tiny SD1.x models and
conditioning), `sd15_checkpoint` (a cached random-weight SD1.5 checkpoint), `server` (a real
`main.py --cpu` with the pack in custom_nodes), `progress` (waits that fail on a hang, never on
a slow machine). tests/conftest.py wraps them in fixtures; test files and benchmarks import the
names below as `comfy_host` (pyproject puts tests/ on the path).
"""

from .comfyui import drop_repo_root_from_sys_path, find_comfyui, import_comfy
from .pack import (
    PACK_MODULE_NAME,
    REPO_ROOT,
    install_core_finder,
    load_pack,
    pack_node_classes,
    run_node,
    run_node_raw,
)
from .progress import Watch, communicate_watched, run_watched
from .sd15_checkpoint import cached_sd15_checkpoint, sd15_unet_config
from .server import PACK_DIR_NAME, ComfyServer, PromptError
from .tiny_models import (
    SD1_TRANSFORMER_BLOCKS,
    TINY_SD1_UNET_CONFIG,
    build_tiny_sd1_model,
    fill_random_,
    make_cond,
    sample_steps,
)

__all__ = [
    "PACK_DIR_NAME", "PACK_MODULE_NAME", "REPO_ROOT", "SD1_TRANSFORMER_BLOCKS",
    "TINY_SD1_UNET_CONFIG", "ComfyServer", "PromptError", "Watch", "build_tiny_sd1_model",
    "cached_sd15_checkpoint", "communicate_watched", "drop_repo_root_from_sys_path",
    "fill_random_", "find_comfyui", "import_comfy", "install_core_finder", "load_pack",
    "make_cond", "pack_node_classes", "run_node", "run_node_raw", "run_watched", "sample_steps",
    "sd15_unet_config",
]
