"""ModelSpec keys of a network file: the hash model sites and ComfyUI can check, the base model's
license and base model, a usage hint; and files written before these keys still load."""

import hashlib
import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from test_fileformat import make_network
from unhype.families import FAMILIES
from unhype.fileformat import USAGE_HINT, load_unhype, save_unhype, tensor_sha256
from unhype.network import NetworkInfo, UnHypeNetwork

NEW_KEYS = ("modelspec.hash_sha256", "modelspec.license", "modelspec.usage_hint",
            "modelspec.base_model")


def data_section_sha256(path) -> str:
    """ModelSpec's definition: SHA-256 of everything after the safetensors header."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(8 + length)
        return "0x" + hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_hash_is_the_sha256_of_the_tensor_data(tmp_path, dtype):
    path = tmp_path / "net.safetensors"
    save_unhype(str(path), make_network("compact"), dtype=dtype)
    with safe_open(str(path), framework="pt") as handle:
        written = handle.metadata()["modelspec.hash_sha256"]
    assert written == data_section_sha256(path)
    assert written.startswith("0x") and len(written) == 66


def test_hash_follows_the_weights():
    a, b = make_network("compact", seed=0), make_network("compact", seed=1)
    state = a.module.state_dict()
    assert tensor_sha256(state) == tensor_sha256(dict(reversed(state.items())))
    assert tensor_sha256(state) != tensor_sha256(b.module.state_dict())


@pytest.mark.parametrize("base_arch", sorted(FAMILIES))
def test_license_usage_hint_and_base_model(tmp_path, base_arch):
    network = make_network("compact")
    network = UnHypeNetwork(network.config, network.targets,
                            NetworkInfo(base_arch, "sd-cross-kv"), network.module)
    path = tmp_path / "net.safetensors"
    save_unhype(str(path), network)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["modelspec.license"] == FAMILIES[base_arch].licence
    assert meta["modelspec.usage_hint"] == USAGE_HINT and "UnHype Loader" in USAGE_HINT
    assert meta["modelspec.base_model"] == FAMILIES[base_arch].modelspec_architecture
    if base_arch == "flux":
        assert "Non-Commercial" in meta["modelspec.license"]


def test_comfyui_asset_scanner_reads_the_base_model(tmp_path):
    """ComfyUI 0.33's scanner (app/assets/services/metadata_extract.py) parses the raw header
    and takes the base model from ss_base_model_version, modelspec.base_model or base_model."""
    path = tmp_path / "net.safetensors"
    save_unhype(str(path), make_network("compact"))
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    st_meta = header["__metadata__"]
    base = (st_meta.get("ss_base_model_version") or st_meta.get("modelspec.base_model")
            or st_meta.get("base_model"))
    assert base == "stable-diffusion-v1"


def test_files_without_the_new_keys_still_load(tmp_path):
    path = tmp_path / "net.safetensors"
    network = make_network("paper")
    save_unhype(str(path), network)
    with safe_open(str(path), framework="pt") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k not in NEW_KEYS}
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    older = tmp_path / "older.safetensors"
    save_file(state, str(older), metadata=meta)
    loaded = load_unhype(str(older))
    for name, tensor in network.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor)
