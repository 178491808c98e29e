"""UnHype Loader: a file from the `unhype` model folder -> UNHYPE (an unhype.UnHypeNetwork) and a
report of what the file says it is (unhype/fileformat.py `file_report`), its hash verified on
request."""

import os
import threading
import weakref

import folder_paths
from comfy_api.latest import io

from ..unhype import UnHypeFileError, load_unhype
from ..unhype.fileformat import file_report
from .folders import NETWORKS
from .schema import CATEGORY, ERASURE, UnHype

#: Networks still alive somewhere (ComfyUI's execution cache, a patched MODEL), by file key.
#: Weak: ComfyUI's execution cache decides how long a network lives, so the memory a network
#: takes is freed when ComfyUI lets go of it; two Loaders of one file share one network.
_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def _file_key(path: str) -> tuple:
    stat = os.stat(path)
    return (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def load_shared(path: str):
    """The network of `path`: the live one if any, else loaded; a rewritten file (new mtime or
    size) is loaded again."""
    key = _file_key(path)
    with _LOCK:
        network = _LIVE.get(key)
        if network is None:
            network = _LIVE[key] = load_unhype(path)
    return network


def _full_path(name: str) -> str:
    path = folder_paths.get_full_path(NETWORKS, name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(NETWORKS))
        raise FileNotFoundError(
            f"UnHype Loader: {name!r} not found in the unhype folders ({folders})"
        )
    return path


class UnHypeLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeLoader",
            display_name="UnHype Loader",
            category=CATEGORY,
            description="Loads an UnHype concept-erasure hypernetwork (.safetensors) from "
                        "models/unhype. Connect it to UnHype Conditioner and Apply Dynamic LoRA.",
            search_aliases=[*ERASURE, "hypernetwork", "load unhype"],
            inputs=[
                io.Combo.Input("unhype_name", options=folder_paths.get_filename_list(NETWORKS),
                               tooltip="An UnHype network in models/unhype."),
                # optional: API prompts written before it stay valid
                io.Boolean.Input("verify_hash", default=False, optional=True,
                                 tooltip="Recompute the SHA-256 of the file's tensors and compare "
                                         "it with the one the file records (ModelSpec "
                                         "hash_sha256, what model hosts show as AutoV3): a "
                                         "mismatch stops the run. Reads the whole file once."),
            ],
            outputs=[
                UnHype.Output(display_name="unhype",
                              tooltip="The network: into UnHype Conditioner (on both prompts) and "
                                      "Apply Dynamic LoRA."),
                io.String.Output(display_name="report",
                                 tooltip="What the file says it is: what it erases (or that its "
                                         "concepts are hidden), its base model and trigger, "
                                         "its measurements, its hash (and whether it matched)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, unhype_name, verify_hash=False):
        """A rewritten file (new mtime or size) runs the node again."""
        path = folder_paths.get_full_path(NETWORKS, unhype_name)
        return repr(_file_key(path)) if path else unhype_name

    @classmethod
    def execute(cls, unhype_name, verify_hash=False) -> io.NodeOutput:
        path = _full_path(unhype_name)
        try:
            network = load_shared(path)
            text = file_report(path, network, verify_hash)
        except UnHypeFileError as error:
            raise ValueError(f"UnHype Loader: {error}") from None
        return io.NodeOutput(network, text, ui={"text": [text]})
