"""The real ComfyUI imported in this process (CPU only), found as unhype/discovery.py finds it."""

from __future__ import annotations

import os
import sys
import tempfile
import types
from pathlib import Path

from .pack import REPO_ROOT, install_core_finder


def find_comfyui() -> tuple[Path | None, str]:
    """(path, "ComfyUI VERSION at PATH"), or (None, why none was found)."""
    install_core_finder()
    from unhype import discovery

    try:
        path = discovery.find()
    except discovery.ComfyUINotFound as error:
        return None, str(error)
    return path, f"ComfyUI {discovery.version(path)} at {path}"


def drop_repo_root_from_sys_path() -> None:
    """`python -m pytest` puts the cwd (the repo root) on sys.path; our `nodes/` package there
    would shadow ComfyUI's top-level `nodes.py`. Remove it."""
    root = str(REPO_ROOT)
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != root]


def import_comfy(comfy_path: Path, workdir: Path | None = None) -> types.SimpleNamespace:
    """Import the real ComfyUI in this process, CPU only. Idempotent.

    ``workdir``: where ComfyUI's output/temp/input/user folders go (default: a temp dir), so the
    checkout is never written to.
    """
    comfy_path = Path(comfy_path).resolve()
    drop_repo_root_from_sys_path()
    nodes_mod = sys.modules.get("nodes")
    nodes_file = Path(getattr(nodes_mod, "__file__", "") or "") if nodes_mod else None
    if nodes_file is not None and nodes_file.parent != comfy_path:
        raise RuntimeError(
            f"a module named 'nodes' is already imported from {nodes_mod.__file__!r}; "
            "ComfyUI's nodes.py must be the only top-level 'nodes' (import the pack relatively)"
        )
    if str(comfy_path) not in sys.path:
        sys.path.insert(0, str(comfy_path))
    elif sys.path[0] != str(comfy_path):
        sys.path.remove(str(comfy_path))
        sys.path.insert(0, str(comfy_path))

    # comfy.cli_args parses sys.argv only when comfy.options.args_parsing is True (main.py turns it
    # on); otherwise it parses [] so pytest's argv does not matter. Set cpu before
    # comfy.model_management is imported: it reads args at import time.
    import comfy.options  # noqa: F401

    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    else:
        import comfy.cli_args

        if not comfy.cli_args.args.cpu:
            raise RuntimeError("comfy.model_management was imported before args.cpu was set")

    import comfy.model_management
    import folder_paths

    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="unhype-comfy-"))
    workdir = Path(workdir)
    for sub in ("output", "temp", "input", "user"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(workdir / "output"))
    folder_paths.set_temp_directory(str(workdir / "temp"))
    folder_paths.set_input_directory(str(workdir / "input"))
    folder_paths.set_user_directory(str(workdir / "user"))

    import comfy.model_base
    import comfy.model_patcher
    import comfy.ops
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    import nodes as comfy_nodes

    return types.SimpleNamespace(
        path=comfy_path,
        workdir=workdir,
        comfy=comfy,
        args=comfy.cli_args.args,
        model_management=comfy.model_management,
        model_base=comfy.model_base,
        model_patcher=comfy.model_patcher,
        ops=comfy.ops,
        sample=comfy.sample,
        samplers=comfy.samplers,
        sd=comfy.sd,
        supported_models=comfy.supported_models,
        utils=comfy.utils,
        folder_paths=folder_paths,
        nodes=comfy_nodes,  # ComfyUI's nodes.py (NODE_CLASS_MAPPINGS, CheckpointLoaderSimple, ...)
    )
