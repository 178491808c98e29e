"""Helpers for running UnHype's tests against a real ComfyUI checkout.

Nothing here is part of the pack. pytest fixtures that wrap these helpers live in
``tests/conftest.py``; this module is importable from test files as ``comfy_host`` (pyproject adds
``tests/`` to ``pythonpath``).

Which ComfyUI checkout: ``unhype/discovery.py`` decides, for the tests as for ``.ci/``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import importlib.machinery
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "comfyui-unhype"  # folder name under custom_nodes in server tests
PACK_MODULE_NAME = "comfyui_unhype"  # sys.modules name for the in-process pack
FIXTURE_CACHE = Path(
    os.environ.get("UNHYPE_FIXTURE_CACHE", Path.home() / ".cache" / "unhype" / "fixtures")
)


# --------------------------------------------------------------------------------------------
# discovery (the rules live in unhype/discovery.py, shared with .ci/ and the headless trainer)
# --------------------------------------------------------------------------------------------
def find_comfyui() -> tuple[Path | None, str]:
    """(path, "ComfyUI VERSION at PATH"), or (None, why none was found)."""
    install_core_finder()
    from unhype import discovery

    try:
        path = discovery.find()
    except discovery.ComfyUINotFound as error:
        return None, str(error)
    return path, f"ComfyUI {discovery.version(path)} at {path}"


# --------------------------------------------------------------------------------------------
# in-process ComfyUI
# --------------------------------------------------------------------------------------------
def _drop_repo_root_from_sys_path() -> None:
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
    _drop_repo_root_from_sys_path()
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


# --------------------------------------------------------------------------------------------
# tiny SD1.x model
# --------------------------------------------------------------------------------------------
TINY_SD1_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "context_dim": 64,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "use_checkpoint": False,
}

# The 16 SD1.x transformer blocks (module paths under model.model.diffusion_model).
SD1_TRANSFORMER_BLOCKS = (
    [f"input_blocks.{i}.1.transformer_blocks.0" for i in (1, 2, 4, 5, 7, 8)]
    + ["middle_block.1.transformer_blocks.0"]
    + [f"output_blocks.{i}.1.transformer_blocks.0" for i in range(3, 12)]
)


def _is_norm_weight(name: str, shape) -> bool:
    if len(shape) != 1 or not name.endswith("weight"):
        return False
    n = name.lower()
    return "norm" in n or n.endswith("ln_1.weight") or n.endswith("ln_2.weight")


def fill_random_(module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministically fill every parameter/buffer of ``module`` (comfy.ops leaves them
    uninitialised): norm weights 1, biases 0, other weights N(0, std)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if _is_norm_weight(name, t.shape):
                t.fill_(1.0)
            elif name.endswith("bias"):
                t.zero_()
            else:
                v = torch.randn(t.shape, generator=gen, dtype=torch.float32) * std
                t.copy_(v.to(t.dtype))


def build_tiny_sd1_model(comfy_ns, seed: int = 0, unet_config: dict | None = None):
    """A tiny SD1.x UNet built with ComfyUI's own classes; returns a ModelPatcher (CPU)."""
    import torch

    cfg = dict(TINY_SD1_UNET_CONFIG)
    if unet_config:
        cfg.update(unet_config)
    model_config = comfy_ns.supported_models.SD15(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = comfy_ns.model_base.BaseModel(model_config, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=seed, std=0.05)
    model.eval()
    return comfy_ns.model_patcher.ModelPatcher(
        model, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )


def make_cond(context_dim: int = 64, tokens: int = 77, seed: int = 0,
              pooled_dim: int | None = None):
    """A CONDITIONING value (list of [tensor [1,T,D], dict]) with random content."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(1, tokens, context_dim, generator=gen)
    pooled = torch.randn(1, pooled_dim or context_dim, generator=gen)
    return [[t, {"pooled_output": pooled}]]


def sample_steps(comfy_ns, model, positive, negative, steps: int = 2, cfg: float = 5.0,
                 size: int = 8, seed: int = 0, sampler: str = "euler", scheduler: str = "normal"):
    """Run comfy.sample.sample on a random latent of [1,4,size,size]; returns the latent."""
    import torch

    latent = torch.zeros(1, 4, size, size)
    noise = comfy_ns.sample.prepare_noise(latent, seed)
    return comfy_ns.sample.sample(
        model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
        disable_pbar=True, seed=seed,
    )


# --------------------------------------------------------------------------------------------
# the pack, loaded in-process as ComfyUI would
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# random-weight SD1.5 checkpoint
# --------------------------------------------------------------------------------------------
SD15_CKPT_VERSION = "sd15-rand-v1"

# UNet: same block layout and module names as SD1.5 (model_channels 320, context 768, 16
# transformer blocks), but channel_mult [1,1,1,1] keeps it at ~90M params instead of 860M.
# ComfyUI's detection reads the layout from the weights and matches SD15 on model_channels,
# context_dim, use_linear_in_transformer, adm_in_channels.
SD15_LAYOUTS = {
    "sd15": {"channel_mult": [1, 1, 1, 1]},
    "full": {"channel_mult": [1, 2, 4, 4]},  # the real 860M SD1.5 UNet shape
    "min": {  # one level: input_blocks.1/2, middle, output_blocks.0-2 only
        "channel_mult": [1],
        "num_res_blocks": [2],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1],
    },
}


def _sd15_unet_config(layout: str) -> dict:
    cfg = dict(TINY_SD1_UNET_CONFIG)
    cfg.update({"model_channels": 320, "context_dim": 768, "num_heads": 8, "num_head_channels": -1})
    cfg.update(SD15_LAYOUTS[layout])
    n = len(cfg["channel_mult"])
    if len(cfg["num_res_blocks"]) != n:
        cfg["num_res_blocks"] = [2] * n
    return cfg


sd15_unet_config = _sd15_unet_config  # public name: the UNet config of the random checkpoint


def _meta_state_dict(module_factory) -> dict[str, tuple[tuple[int, ...], str]]:
    import torch

    with torch.device("meta"):
        m = module_factory()
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in m.state_dict().items()}


def sd15_checkpoint_shapes(layout: str = "sd15", vae: str = "taesd") -> dict[str, tuple]:
    """{key: (shape, torch dtype str)} of an SD1.5-format checkpoint, computed from ComfyUI's own
    classes on the meta device. ComfyUI must already be imported (import_comfy)."""
    import json as _json

    import comfy.clip_model
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops
    import torch

    ops = comfy.ops.disable_weight_init
    unet_cfg = _sd15_unet_config(layout)
    shapes = {}
    for k, v in _meta_state_dict(lambda: oai.UNetModel(**unet_cfg, operations=ops)).items():
        shapes["model.diffusion_model." + k] = v

    clip_cfg_path = Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json"
    clip_cfg = _json.loads(clip_cfg_path.read_text())
    clip_sd = _meta_state_dict(
        lambda: comfy.clip_model.CLIPTextModel(clip_cfg, torch.float32, None, ops)
    )
    for k, v in clip_sd.items():
        if k.startswith("text_projection") or k.startswith("logit_scale"):
            continue
        shapes["cond_stage_model.transformer." + k] = v
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ((1, 77), "int64")

    if vae == "taesd":
        import comfy.taesd.taesd as taesd

        vae_sd = _meta_state_dict(lambda: taesd.TAESD(latent_channels=4))
    elif vae == "full":
        import comfy.ldm.models.autoencoder as ae

        ddconfig = {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
            "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
            "dropout": 0.0,
        }
        vae_sd = _meta_state_dict(lambda: ae.AutoencoderKL(ddconfig=ddconfig, embed_dim=4))
    else:
        raise ValueError(f"vae must be 'taesd' or 'full', not {vae!r}")
    for k, v in vae_sd.items():
        shapes["first_stage_model." + k] = v
    return shapes


def make_sd15_checkpoint(path: Path, seed: int = 0, layout: str = "sd15", vae: str = "taesd",
                         dtype: str = "float16") -> Path:
    """Write a random-weight checkpoint that CheckpointLoaderSimple detects as SD1.5."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (shape, src_dtype) in sorted(sd15_checkpoint_shapes(layout, vae).items()):
        if k.endswith("position_ids"):
            sd[k] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
            continue
        if src_dtype not in ("torch.float32", "torch.float16", "torch.bfloat16"):
            sd[k] = torch.zeros(shape, dtype=getattr(torch, src_dtype.split(".")[1]))
            continue
        if _is_norm_weight(k, shape):
            t = torch.ones(shape, dtype=tdtype)
        elif k.endswith("bias") or len(shape) == 0 and "vae_shift" in k:
            t = torch.zeros(shape, dtype=tdtype)
        elif len(shape) == 0:  # e.g. taesd vae_scale
            t = torch.ones(shape, dtype=tdtype)
        else:
            t = (torch.randn(shape, generator=gen) * 0.02).to(tdtype)
        sd[k] = t.contiguous()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(sd, str(tmp), metadata={"unhype_fixture": f"{SD15_CKPT_VERSION}/{layout}/{vae}"})
    os.replace(tmp, path)
    return path


def cached_sd15_checkpoint(seed: int = 0, layout: str = "sd15", vae: str = "taesd",
                           cache_dir: Path | None = None) -> Path:
    """Path to a cached random SD1.5 checkpoint (generated on first use)."""
    key = hashlib.sha1(f"{SD15_CKPT_VERSION}-{seed}-{layout}-{vae}".encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir or FIXTURE_CACHE)
    path = cache_dir / f"unhype-test-sd15-{layout}-{vae}-{key}.safetensors"
    if not path.is_file():
        lock = path.with_suffix(".lock")
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - windows
                pass
            if not path.is_file():
                make_sd15_checkpoint(path, seed=seed, layout=layout, vae=vae)
    return path


# --------------------------------------------------------------------------------------------
# the real server
# --------------------------------------------------------------------------------------------
MODEL_FOLDERS = (
    "checkpoints", "loras", "unhype", "clip", "text_encoders", "vae", "diffusion_models",
    "embeddings", "controlnet", "upscale_models",
)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptError(RuntimeError):
    def __init__(self, message: str, details: Any = None):
        super().__init__(message)
        self.details = details


class ComfyServer:
    """A real `python main.py --cpu` server with our pack installed via a symlink."""

    def __init__(self, comfy_path: Path, workdir: Path, python: str | None = None,
                 extra_args: list[str] | None = None, pack_root: Path = REPO_ROOT,
                 install_pack: bool = True):
        self.comfy_path = Path(comfy_path)
        self.workdir = Path(workdir)
        self.python = python or sys.executable
        self.extra_args = list(extra_args or [])
        self.pack_root = Path(pack_root)
        self.install_pack = install_pack
        self.port = None
        self.proc: subprocess.Popen | None = None
        self.base_dir = self.workdir / "base"  # --base-directory: output/input/temp/user
        self.custom_nodes_dir = self.workdir / "custom_nodes"
        self.models_dir = self.workdir / "models"
        self.log_path = self.workdir / "server.log"
        self.client_id = uuid.uuid4().hex
        self.start_seconds = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _write_config(self) -> Path:
        (self.base_dir / "custom_nodes").mkdir(parents=True, exist_ok=True)
        self.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / PACK_DIR_NAME
        if self.install_pack and not link.is_symlink():
            link.symlink_to(self.pack_root, target_is_directory=True)
        lines = ["unhype_tests:", f"  custom_nodes: {self.custom_nodes_dir}"]
        for name in MODEL_FOLDERS:
            (self.models_dir / name).mkdir(parents=True, exist_ok=True)
            lines.append(f"  {name}: {self.models_dir / name}")
        cfg = self.workdir / "extra_model_paths.yaml"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def command(self) -> list[str]:
        cfg = self._write_config()
        return [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--extra-model-paths-config", str(cfg),
            "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch", "--disable-api-nodes",
            *self.extra_args,
        ]

    def start(self, timeout: float = 90.0) -> ComfyServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)
        t0 = time.monotonic()
        self._log_fh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.comfy_path, env=env, stdout=self._log_fh,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        atexit.register(self.stop)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                msg = f"ComfyUI exited with code {code} during start-up\n"
                raise RuntimeError(msg + self.log())
            try:
                self.get_json("/object_info", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                msg = f"ComfyUI did not answer /object_info in {timeout}s\n"
                raise TimeoutError(msg + self.log())
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        fh = getattr(self, "_log_fh", None)
        if fh is not None and not fh.closed:
            fh.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- introspection -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, tail: int | None = 20000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text if tail is None else text[-tail:]

    def pack_import_failed(self) -> bool:
        """True if ComfyUI reported our pack as failed to import."""
        for line in self.log(None).splitlines():
            if "IMPORT FAILED" in line and PACK_DIR_NAME in line:
                return True
        return False

    def pack_import_error(self) -> str | None:
        """The log section about our pack's import, if it failed."""
        if not self.pack_import_failed():
            return None
        return self.log(None)

    def add_model(self, folder: str, src: Path, name: str | None = None) -> str:
        """Symlink a file into the server's models/<folder>; returns the name to use in graphs."""
        src = Path(src).resolve()
        dst_dir = self.models_dir / folder
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / (name or src.name)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)
        return dst.name

    # -- HTTP --------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str, timeout: float = 30):
        status, raw = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise urllib.error.URLError(f"GET {path} -> {status}: {raw[:500]!r}")
        return json.loads(raw)

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    def post_prompt(self, api_graph: dict, allow_node_errors: bool = False) -> str:
        """POST /prompt; returns the prompt_id. Raises PromptError on validation errors."""
        status, raw = self.request(
            "POST", "/prompt", {"prompt": api_graph, "client_id": self.client_id}
        )
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        if status != 200:
            text = json.dumps(body, indent=1)[:4000]
            raise PromptError(f"POST /prompt -> {status}: {text}", body)
        if body.get("node_errors") and not allow_node_errors:
            raise PromptError(
                "prompt has node errors: " + json.dumps(body["node_errors"], indent=1)[:4000], body
            )
        return body["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 120) -> dict:
        """Wait for a prompt to finish; return its outputs ({node_id: ui dict}). Raises
        PromptError with the node's exception and traceback when execution fails."""
        deadline = time.monotonic() + timeout
        while True:
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("status_str") in ("success", "error")
            ):
                status = entry["status"]
                if status.get("status_str") == "error" or not status.get("completed", False):
                    msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    if msgs:
                        err = msgs[0][1]
                        tb = "".join(err.get("traceback", []))
                        raise PromptError(
                            f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                            f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}",
                            err,
                        )
                    raise PromptError(f"prompt {prompt_id} failed: {status}", status)
                return entry.get("outputs", {})
            if self.proc is not None and self.proc.poll() is not None:
                raise PromptError(f"server died while running {prompt_id}\n" + self.log(), None)
            if time.monotonic() > deadline:
                msg = f"prompt {prompt_id} not finished after {timeout}s\n"
                raise TimeoutError(msg + self.log(4000))
            time.sleep(0.1)

    def run(self, api_graph: dict, timeout: float = 120) -> dict:
        """post_prompt + wait_history."""
        return self.wait_history(self.post_prompt(api_graph), timeout)

    def output_path(self, image: dict) -> Path:
        """Local path of an image entry from outputs (``{"filename", "subfolder", "type"}``)."""
        kind = image.get("type", "output")
        base = self.base_dir / ("temp" if kind == "temp" else kind)
        return base / image.get("subfolder", "") / image["filename"]


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
