"""ModelSpec keys of a network file: every MUST and SHOULD key of ModelSpec 1.0.1 in its format,
the hash model sites and ComfyUI can check, the base model's license and base model, a usage
hint, the concept manifest and the evaluation; and files written before these keys still load."""

import hashlib
import json
import re
import struct
from datetime import datetime

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from test_fileformat import make_network
from unhype.families import FAMILIES
from unhype.fileformat import (
    USAGE_HINT,
    UnHypeFileError,
    check_hash,
    file_sha256,
    load_unhype,
    read_header,
    save_unhype,
    tensor_sha256,
)
from unhype.network import NetworkInfo, UnHypeNetwork

NEW_KEYS = ("modelspec.hash_sha256", "modelspec.license", "modelspec.usage_hint",
            "modelspec.base_model", "modelspec.resolution", "modelspec.author", "unhype.concepts",
            "unhype.eval")


def iso_8601(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


#: ModelSpec 1.0.1 as kohya-ss sd-scripts emits it (library/sai_model_spec.py, after the
#: Stability-AI/ModelSpec README): MUST, then SHOULD keys, each with a check of its format
MODELSPEC_1_0_1 = {
    "sai_model_spec": lambda v: v == "1.0.1",
    "architecture": lambda v: re.fullmatch(r"[a-z0-9.-]+/unhype", v),
    "implementation": lambda v: v.startswith("https://"),
    "title": bool,
    "resolution": lambda v: re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", v),
    "description": bool,
    "author": bool,
    "date": iso_8601,
    "hash_sha256": lambda v: re.fullmatch(r"0x[0-9a-f]{64}", v),
}


@pytest.mark.parametrize("base_arch", sorted(FAMILIES))
def test_every_must_and_should_key_of_modelspec_1_0_1(tmp_path, base_arch):
    network = make_network("compact")
    network = UnHypeNetwork(network.config, network.targets,
                            NetworkInfo(base_arch, "sd-cross-kv", title="t"), network.module)
    path = tmp_path / "net.safetensors"
    save_unhype(str(path), network)
    meta, _ = read_header(str(path))
    for key, valid in MODELSPEC_1_0_1.items():
        value = meta[f"modelspec.{key}"]
        assert isinstance(value, str) and valid(value), (key, value)
    resolution = FAMILIES[base_arch].resolution
    assert meta["modelspec.resolution"] == f"{resolution}x{resolution}"
    assert meta["modelspec.author"] == "anonymous"  # none given
    assert "modelspec.trigger_phrase" not in meta  # erased concepts are not trigger words


def test_concept_manifest_tags_and_eval(tmp_path):
    network = make_network("compact")
    separation = {"step": 5, "erase_norm": 2.0, "retain_norm": 0.5, "residual": 0.4,
                  "trigger": 4.0, "separated": True}
    for hidden in (False, True):
        training = {"concept_count": 2, "concepts_sha256": "ab" * 32, "separation": separation,
                    "anchors": {} if hidden else {"van gogh": "a painting", "a, cat": ""},
                    **({} if hidden else {"concepts": ["van gogh", "a, cat"]})}
        info = NetworkInfo("sd1", "sd-cross-kv", author="me", training=training)
        path = tmp_path / f"{hidden}.safetensors"
        save_unhype(str(path), UnHypeNetwork(network.config, network.targets, info,
                                             network.module))
        meta, _ = read_header(str(path))
        manifest = json.loads(meta["unhype.concepts"])
        assert manifest["hidden"] is hidden and manifest["sha256"] == "ab" * 32
        assert json.loads(meta["unhype.eval"]) == {"separation": separation}
        assert meta["modelspec.author"] == "me" and load_unhype(str(path)).info.author == "me"
        if hidden:
            assert "concepts" not in manifest and "van gogh" not in json.dumps(meta)
        else:
            assert manifest["concepts"] == [{"erase": "van gogh", "anchor": "a painting"},
                                            {"erase": "a, cat", "anchor": ""}]
            assert meta["modelspec.tags"].split(",")[-2:] == ["van gogh", "a  cat"]


def test_verify_hash_matches_and_catches_a_changed_tensor(tmp_path):
    path = tmp_path / "net.safetensors"
    save_unhype(str(path), make_network("compact"))
    meta, _ = read_header(str(path))
    assert file_sha256(str(path)) == meta["modelspec.hash_sha256"] == data_section_sha256(path)
    assert "verified" in check_hash(str(path), meta)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor, header untouched
    path.write_bytes(bytes(data))
    with pytest.raises(UnHypeFileError, match="hash MISMATCH"):
        check_hash(str(path), meta)
    assert "cannot verify" in check_hash(str(path), {})


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
