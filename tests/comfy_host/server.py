"""A real ComfyUI server (`main.py --cpu`) with the pack symlinked into its custom_nodes."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from .pack import REPO_ROOT
from .progress import STALL_SECONDS, Watch

PACK_DIR_NAME = "comfyui-unhype"  # folder name under custom_nodes in server tests


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

    def start(self, budget: float = 90.0) -> ComfyServer:
        """Start the server and wait until it answers; `budget`: the hang guard, in seconds of
        the machine to itself (tests/comfy_host/progress.py)."""
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
        watch = Watch(self.proc.pid, budget, "ComfyUI start-up", outputs=[self.log_path])
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                msg = f"ComfyUI exited with code {code} during start-up\n"
                raise RuntimeError(msg + self.log())
            try:
                self.get_json("/object_info")
                break
            except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
                pass
            try:
                watch.check(self.log)
            except TimeoutError:
                self.stop()
                raise
            time.sleep(0.25)
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:  # not a test failure: a server slow to stop is killed
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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
    def request(self, method: str, path: str, body: Any = None):
        """One HTTP request; a server that sends nothing for STALL_SECONDS is hung."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(req, timeout=STALL_SECONDS) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str):
        status, raw = self.request("GET", path)
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

    def watch(self, budget: float, what: str) -> Watch:
        """Hang guards on the server's work from now on (its CPU time and its log)."""
        return Watch(self.proc.pid, budget, what, outputs=[self.log_path])

    def wait_history(self, prompt_id: str, budget: float = 120) -> dict:
        """Wait for a prompt to finish; return its outputs ({node_id: ui dict}). Raises
        PromptError with the node's exception and traceback when execution fails, and
        TimeoutError only on a hang guard (`budget`: see tests/comfy_host/progress.py)."""
        watch = self.watch(budget, f"prompt {prompt_id}")
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
            watch.check(lambda: self.log(4000))
            time.sleep(0.1)

    def run(self, api_graph: dict, budget: float = 120) -> dict:
        """post_prompt + wait_history."""
        return self.wait_history(self.post_prompt(api_graph), budget)

    def output_path(self, image: dict) -> Path:
        """Local path of an image entry from outputs (``{"filename", "subfolder", "type"}``)."""
        kind = image.get("type", "output")
        base = self.base_dir / ("temp" if kind == "temp" else kind)
        return base / image.get("subfolder", "") / image["filename"]
