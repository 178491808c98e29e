"""The pack loaded in-process as ComfyUI loads a custom node, and its nodes run as ComfyUI runs
them. The repo-root `unhype` (host-free tests) and the pack's own `comfyui_unhype.unhype` are two
copies of the core: see docs/development.md, Tests."""

from __future__ import annotations

import asyncio
import importlib.machinery
import inspect
import sys
import types
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PACK_MODULE_NAME = "comfyui_unhype"  # sys.modules name for the in-process pack


class _CoreFinder:
    """Makes ``import unhype`` resolve to REPO_ROOT/unhype without putting the repo root (and
    thereby our ``nodes/`` package) on sys.path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "unhype":
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(REPO_ROOT)])


def install_core_finder() -> None:
    if not any(isinstance(f, _CoreFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CoreFinder())


def load_pack(root: Path = REPO_ROOT, module_name: str = PACK_MODULE_NAME) -> types.ModuleType:
    """Import the pack's ``__init__.py`` as a package named ``module_name`` (like ComfyUI's
    load_custom_node). Requires ComfyUI to be importable (call import_comfy first)."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    init = Path(root) / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"pack entry point {init} does not exist")
    from unhype.headless import load_package

    return load_package(module_name, Path(root))


def pack_node_classes(module: types.ModuleType) -> dict[str, Any]:
    """node id -> class, as ComfyUI collects them from a V3 pack's comfy_entrypoint."""

    async def collect():
        extension = await module.comfy_entrypoint()
        await extension.on_load()
        return await extension.get_node_list()

    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(collect())}


def run_node(node_cls, **inputs) -> tuple:
    """Execute a node class (V1 or V3) with keyword inputs and return its output tuple. For V3
    nodes the NodeOutput's ``.ui`` is dropped; use ``run_node_raw`` to get it."""
    out = run_node_raw(node_cls, **inputs)
    if hasattr(out, "result") and not isinstance(out, (tuple, list, dict)):
        res = out.result
        return tuple(res) if res is not None else ()
    if isinstance(out, dict):  # V1 {"ui": ..., "result": (...)}
        return tuple(out.get("result", ()))
    return tuple(out)


def run_node_raw(node_cls, **inputs):
    from comfy_api.internal import _ComfyNodeInternal, make_locked_method_func

    if isinstance(node_cls, type) and issubclass(node_cls, _ComfyNodeInternal):
        node_cls.VALIDATE_CLASS()
        clone = node_cls.PREPARE_CLASS_CLONE(None)
        fn = make_locked_method_func(node_cls, "execute", clone)
    else:
        obj = node_cls() if isinstance(node_cls, type) else node_cls
        fn = getattr(obj, obj.FUNCTION)
    out = fn(**inputs)
    if inspect.isawaitable(out):
        out = asyncio.run(_await(out))
    return out


async def _await(x):
    return await x
