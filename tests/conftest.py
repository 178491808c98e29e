"""Shared pytest fixtures: a real ComfyUI (in-process and as a server), tiny models, the pack.

Fixtures (see the package tests/comfy_host/ for the helpers behind them):

- ``comfyui_path`` (session) -> Path of the ComfyUI checkout; skips when there is none.
- ``comfy`` (session) -> namespace of ComfyUI modules imported in-process with ``--cpu``:
  ``comfy.sd``, ``comfy.sample``, ``comfy.samplers``, ``comfy.model_patcher``, ``comfy.utils``,
  ``comfy.folder_paths``, ``comfy.nodes`` (ComfyUI's nodes.py), ``comfy.workdir`` ...
- ``tiny_sd1_model`` -> a fresh ``ModelPatcher.clone()`` of a tiny SD1.x UNet (model_channels 32,
  context_dim 64, SD1 module names). Clones share one nn.Module: do not leave it modified.
- ``make_tiny_sd1_model`` -> factory ``(seed=0, **unet_config) -> ModelPatcher`` (a new module).
- ``tiny_conds`` -> ``(positive, negative)`` CONDITIONING for the tiny model (context_dim 64).
- ``unhype_pack`` (session) -> the pack's ``__init__`` imported as ``comfyui_unhype``.
- ``pack_nodes`` (session) -> ``{node_id: class}`` of the pack (its V3 nodes).
- ``unhype_host`` (module) -> the host the helpers of ``tests/_nodes_helpers.py`` use (ComfyUI,
  the pack, its own core, its nodes); a test module asks for it with
  ``pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]``.
- ``sd15_checkpoint`` (session) -> Path of a cached random-weight SD1.5 checkpoint.
- ``sd15_checkpoint_name`` (session) -> its file name, registered in ComfyUI's in-process
  ``checkpoints`` folder list (for CheckpointLoaderSimple).
- ``sd15_model`` (session) -> (MODEL, CLIP, VAE) loaded from it by CheckpointLoaderSimple.
- ``comfy_server`` (module) -> a running ``comfy_host.ComfyServer`` with the pack symlinked in.

Tests marked ``host`` skip when no ComfyUI checkout is found.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import comfy_host

_COMFY_PATH, _COMFY_DESC = None, "no ComfyUI looked for yet"
_HOST_NODEIDS: set[str] = set()
TIMINGS: dict[str, float] = {}


# ------------------------------------------------------------------------------------------
# markers, skipping, summary
# ------------------------------------------------------------------------------------------
class _RepoRootIsNotATestPackage:
    """The repo root has an ``__init__.py`` (the pack's entry point, with relative imports).
    pytest would make it a ``Package`` and import it to look for ``setup_module``, under a name
    taken from the clone's folder ("comfyui-unhype" is not even an identifier): that import
    fails. Collect the root as a plain directory instead. Registered as a global plugin because
    a collection hook in tests/conftest.py does not apply to the directory above it."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path) == comfy_host.REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    """Before any test module is imported: offline, the repo root off sys.path (our `nodes/`
    would shadow ComfyUI's nodes.py), `import unhype` from the repo root, ComfyUI found."""
    global _COMFY_PATH, _COMFY_DESC
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    comfy_host.drop_repo_root_from_sys_path()
    comfy_host.install_core_finder()
    _COMFY_PATH, _COMFY_DESC = comfy_host.find_comfyui()
    if not config.pluginmanager.has_plugin("unhype-root-dir"):
        config.pluginmanager.register(_RepoRootIsNotATestPackage(), "unhype-root-dir")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason=_COMFY_DESC)
    for item in items:
        if item.get_closest_marker("host") is not None:
            _HOST_NODEIDS.add(item.nodeid)
            if _COMFY_PATH is None:
                item.add_marker(skip)


def pytest_report_header(config):
    return f"unhype: {_COMFY_DESC}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    def count(kind, when):
        return sum(
            1
            for r in terminalreporter.stats.get(kind, [])
            if getattr(r, "nodeid", None) in _HOST_NODEIDS and (when is None or r.when == when)
        )

    passed = count("passed", "call")
    skipped = count("skipped", None)
    failed = count("failed", None) + count("error", None)
    line = f"host tests: {passed} passed, {skipped} skipped"
    if failed:
        line += f", {failed} failed"
    # .ci/run reads this line (one pytest run per ComfyUI version)
    where = f"on {_COMFY_DESC}" if _COMFY_PATH is not None else f"({_COMFY_DESC})"
    terminalreporter.write_line(f"{line} {where}")
    if TIMINGS:
        terminalreporter.write_line(
            "harness timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in TIMINGS.items())
        )


# ------------------------------------------------------------------------------------------
# in-process ComfyUI
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    if _COMFY_PATH is None:
        pytest.skip(_COMFY_DESC)
    return _COMFY_PATH


@pytest.fixture(scope="session")
def comfy(comfyui_path, tmp_path_factory):
    t0 = time.monotonic()
    ns = comfy_host.import_comfy(comfyui_path, workdir=tmp_path_factory.mktemp("comfyui"))
    TIMINGS.setdefault("comfy import", time.monotonic() - t0)
    return ns


@pytest.fixture
def loras(comfy, monkeypatch, tmp_path):
    """models/loras in a temporary folder, as LoraLoaderModelOnly and the Bake node see it."""
    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "loras",
                        ([str(folder)], {".safetensors"}))
    return folder


@pytest.fixture
def folders(comfy, unhype_pack, monkeypatch, tmp_path):
    """models/unhype and models/unhype_checkpoints in a temporary folder for this test: where
    the UnHype Trainer writes networks and checkpoints and finds what to resume."""
    pack_folders = sys.modules[unhype_pack.__name__ + ".nodes.folders"]
    paths = {}
    for kind in (pack_folders.NETWORKS, pack_folders.CHECKPOINTS):
        folder = tmp_path / kind
        folder.mkdir()
        monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, kind,
                            ([str(folder)], {".safetensors"}))
        paths[kind] = folder
    # folder_paths caches file lists by folder mtime; a fresh folder per test keeps it honest
    return paths


@pytest.fixture(scope="session")
def _tiny_sd1_base(comfy):
    t0 = time.monotonic()
    model = comfy_host.build_tiny_sd1_model(comfy, seed=0)
    dm = model.model.diffusion_model
    names = dict(dm.named_modules())
    wanted = [b + ".attn2.to_k" for b in comfy_host.SD1_TRANSFORMER_BLOCKS]
    missing = [n for n in wanted if n not in names]
    assert not missing, f"tiny SD1 model lacks SD1 module names: {missing}"
    TIMINGS.setdefault("tiny SD1 build", time.monotonic() - t0)
    return model


@pytest.fixture
def tiny_sd1_model(_tiny_sd1_base):
    return _tiny_sd1_base.clone()


@pytest.fixture
def make_tiny_sd1_model(comfy):
    def make(seed: int = 0, **unet_config):
        return comfy_host.build_tiny_sd1_model(comfy, seed=seed, unet_config=unet_config)

    return make


@pytest.fixture
def tiny_conds():
    return comfy_host.make_cond(64, seed=1), comfy_host.make_cond(64, seed=2)


# ------------------------------------------------------------------------------------------
# the pack
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def unhype_pack(comfy):
    if not (comfy_host.REPO_ROOT / "__init__.py").is_file():
        pytest.skip("the pack's __init__.py does not exist yet")
    return comfy_host.load_pack()


@pytest.fixture(scope="session")
def pack_nodes(unhype_pack):
    return comfy_host.pack_node_classes(unhype_pack)


@pytest.fixture(scope="module")
def unhype_host(comfy, unhype_pack, pack_nodes):
    """The in-process ComfyUI and the pack, for the helpers in tests/_nodes_helpers.py."""
    import _nodes_helpers

    return _nodes_helpers.use_host(comfy, unhype_pack, pack_nodes)


# ------------------------------------------------------------------------------------------
# random SD1.5 checkpoint
# ------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_parts(unhype_host):
    """What UnHype nodes remember of the texts they saw is process-wide (nodes/sampling/
    parts.py): empty before and after the test."""
    from _nodes_helpers import forget_parts

    forget_parts()
    yield
    forget_parts()


@pytest.fixture(scope="session")
def sd15_checkpoint(comfy) -> Path:
    t0 = time.monotonic()
    path = comfy_host.cached_sd15_checkpoint()
    TIMINGS.setdefault("sd15 checkpoint (cached or generated)", time.monotonic() - t0)
    return path


@pytest.fixture(scope="session")
def sd15_checkpoint_name(comfy, sd15_checkpoint) -> str:
    comfy.folder_paths.add_model_folder_path("checkpoints", str(sd15_checkpoint.parent))
    return sd15_checkpoint.name


@pytest.fixture(scope="session")
def sd15_model(comfy, sd15_checkpoint_name):
    t0 = time.monotonic()
    out = comfy_host.run_node(comfy.nodes.CheckpointLoaderSimple, ckpt_name=sd15_checkpoint_name)
    TIMINGS.setdefault("sd15 load", time.monotonic() - t0)
    return out


# ------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfy_server(comfyui_path, tmp_path_factory):
    """A real ComfyUI server (``main.py --cpu``) with this repo symlinked as
    custom_nodes/comfyui-unhype; one per test module. ``server.install_pack`` is False when the
    pack has no ``__init__.py`` yet (then the pack is not installed)."""
    workdir = tmp_path_factory.mktemp("comfy_server")
    has_pack = (comfy_host.REPO_ROOT / "__init__.py").is_file()
    server = comfy_host.ComfyServer(comfyui_path, workdir, install_pack=has_pack)
    server.start()
    TIMINGS.setdefault("server start", server.start_seconds)
    try:
        if server.pack_import_failed():
            pytest.fail(
                "ComfyUI reported IMPORT FAILED for the pack:\n" + server.log(None), pytrace=False
            )
        yield server
    finally:
        server.stop()
