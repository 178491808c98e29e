"""The .safetensors UnHype file: exact round trip, metadata, and a clear error for each bad file."""

import dataclasses
import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unhype import fileformat
from unhype.fileformat import (
    FORMAT_VERSION,
    UnHypeFileError,
    load_unhype,
    read_header,
    save_unhype,
)
from unhype.hypernet import VARIANTS, HyperNetConfig
from unhype.network import NetworkInfo, UnHypeNetwork
from unhype.targets import Target

TARGETS = [
    Target("input_blocks.1.1.transformer_blocks.0.attn2.to_k", 12, 8),
    Target("input_blocks.1.1.transformer_blocks.0.attn2.to_v", 12, 8),
    Target("double_blocks.0.img_attn.qkv", 8, 24, (16, 24)),
]
TRAINING = {
    "concepts": ["van gogh", "a cat"],
    "steps": 4000,
    "lr": 2e-4,
    "objective": "trajectory",
    "date": "2026-11-28T04:00:00+00:00",
    "nested": {"eta": 1.0, "anchors": ["a man", ""]},
}


def make_network(variant: str, seed: int = 0) -> UnHypeNetwork:
    torch.manual_seed(seed)
    config = HyperNetConfig(
        embed_dim=12, rank=2, hidden=8, fourier_dim=4, variant=variant, norm_cap=None,
        compact_trunk=8, compact_code=6, compact_layer_embed=3, alpha0=0.5, seed=seed,
    )
    info = NetworkInfo(
        base_arch="sd1", target_preset="sd-cross-kv", title="Test network",
        description="erases two things", training=TRAINING, activation_reference=3.25,
        gate_threshold=0.125,
    )
    network = UnHypeNetwork(config, TARGETS, info)
    with torch.no_grad():  # random everywhere, so the round trip is not trivially zeros
        for tensor in network.module.state_dict().values():
            tensor.copy_(torch.randn_like(tensor))
    return network


@pytest.fixture(params=VARIANTS)
def saved(request, tmp_path):
    network = make_network(request.param)
    path = str(tmp_path / f"{request.param}.safetensors")
    save_unhype(path, network)
    return path, network


def rewrite(source, target, metadata=None, drop=(), tensors=None):
    """Copy an UnHype file, changing metadata keys (None: remove the key) and tensors."""
    with safe_open(source, framework="pt") as handle:
        meta = dict(handle.metadata())
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    for key, value in (metadata or {}).items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    for name in drop:
        del state[name]
    state.update(tensors or {})
    save_file(state, target, metadata=meta)
    return target


def load_error(path) -> str:
    with pytest.raises(UnHypeFileError) as caught:
        load_unhype(path)
    return str(caught.value)


def test_round_trip_is_exact(saved):
    path, network = saved
    loaded = load_unhype(path)
    original, restored = network.module.state_dict(), loaded.module.state_dict()
    assert list(original) == list(restored)
    for name in original:
        assert restored[name].dtype == torch.float32 and restored[name].device.type == "cpu"
        assert torch.equal(original[name], restored[name]), name
    assert loaded.config == network.config
    assert loaded.targets == network.targets
    assert loaded.info == network.info
    assert loaded.info.training == TRAINING and loaded.info.activation_reference == 3.25
    assert loaded.info.gate_threshold == 0.125
    assert not any(p.requires_grad for p in loaded.module.parameters())
    assert not loaded.module.training
    embeddings = torch.randn(3, 12)
    for name, f in network.factors(embeddings).items():
        got = loaded.factors(embeddings)[name]
        assert torch.equal(f.down, got.down) and torch.equal(f.up, got.up)


def test_metadata_keys(saved):
    path, network = saved
    metadata, shapes = read_header(path)
    assert metadata["format"] == "unhype"
    assert metadata["format_version"] == str(FORMAT_VERSION) == "1"
    for key in ("sai_model_spec", "architecture", "implementation", "title", "description",
                "date", "tags"):
        assert metadata[f"modelspec.{key}"], key
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/unhype"
    assert metadata["modelspec.title"] == "Test network"
    assert metadata["modelspec.date"] == TRAINING["date"]
    assert json.loads(metadata["unhype.config"])["variant"] == network.config.variant
    assert json.loads(metadata["unhype.embedding"])["dim"] == 12
    assert shapes == {n: list(t.shape) for n, t in network.module.state_dict().items()}
    # Every metadata value is a string (the safetensors rule).
    assert all(isinstance(v, str) for v in metadata.values())


def test_empty_description_gets_a_default(tmp_path):
    network = make_network("paper")
    network.info.description = ""
    path = str(tmp_path / "n.safetensors")
    save_unhype(path, network)
    assert "UnHype concept-erasure hypernetwork (paper, rank 2, 3 layers)" in (
        read_header(path)[0]["modelspec.description"]
    )


def test_save_as_half_loads_as_float32(tmp_path):
    network = make_network("compact")
    path = str(tmp_path / "half.safetensors")
    save_unhype(path, network, dtype=torch.float16)
    loaded = load_unhype(path)
    for name, tensor in network.module.state_dict().items():
        restored = loaded.module.state_dict()[name]
        assert restored.dtype == torch.float32
        assert torch.equal(restored, tensor.half().float())


def test_no_pickle_is_used(saved, monkeypatch):
    path, network = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load_unhype")

    for owner, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                        (torch, "load"), (torch.serialization, "load")):
        monkeypatch.setattr(owner, name, forbidden)
    loaded = load_unhype(path)
    assert torch.equal(loaded.module.alpha, network.module.alpha)


def test_save_is_atomic(tmp_path):
    path = str(tmp_path / "net.safetensors")
    save_unhype(path, make_network("paper"))
    assert os.listdir(tmp_path) == ["net.safetensors"]
    save_unhype(path, make_network("paper", seed=1))  # overwrite in place
    assert os.listdir(tmp_path) == ["net.safetensors"]
    assert torch.equal(load_unhype(path).module.alpha, make_network("paper", seed=1).module.alpha)


def test_nonexistent_file(tmp_path):
    path = str(tmp_path / "absent.safetensors")
    assert "no such file" in load_error(path) and path in load_error(path)
    assert "no such file" in load_error(str(tmp_path))  # a folder is not a file either


@pytest.mark.parametrize("cut", [1, 100, 10_000])
def test_truncated_file(saved, tmp_path, cut):
    path, _ = saved
    data = open(path, "rb").read()
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(data[: max(len(data) - cut, 4)])
    message = load_error(str(broken))
    assert "not a readable .safetensors file" in message and "truncated" in message


def test_random_garbage(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                      dtype=torch.uint8).numpy().tobytes())
    assert "not a readable .safetensors file" in load_error(str(garbage))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert "not a readable .safetensors file" in load_error(str(empty))


def test_ordinary_lora(tmp_path):
    path = str(tmp_path / "style.safetensors")
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_up.weight": torch.zeros(8, 4),
               f"{key}.lora_down.weight": torch.zeros(4, 12),
               f"{key}.alpha": torch.tensor(4.0)}, path)
    message = load_error(path)
    assert "ordinary LoRA" in message and "LoRA loader" in message


def test_safetensors_without_unhype_metadata(tmp_path):
    plain = str(tmp_path / "plain.safetensors")
    save_file({"weight": torch.ones(3)}, plain)
    assert "not an UnHype network" in load_error(plain)
    tagged = str(tmp_path / "tagged.safetensors")
    save_file({"weight": torch.ones(3)}, tagged, metadata={"format": "pt"})
    assert "not an UnHype network" in load_error(tagged)


def test_newer_format_version(saved, tmp_path):
    path, _ = saved
    newer = rewrite(path, str(tmp_path / "v99.safetensors"), {"format_version": "99"})
    message = load_error(newer)
    assert "format version 99" in message and "update" in message
    bad = rewrite(path, str(tmp_path / "vx.safetensors"), {"format_version": "one"})
    assert "format_version is missing or not a number" in load_error(bad)


@pytest.mark.parametrize("key", ["unhype.config", "unhype.targets", "unhype.training"])
def test_broken_metadata_json(saved, tmp_path, key):
    path, _ = saved
    broken = rewrite(path, str(tmp_path / "broken.safetensors"), {key: '{"rank": 2,'})
    message = load_error(broken)
    assert f"metadata key {key!r} is not valid JSON" in message


def test_file_saved_before_the_gate_loads_without_one(saved, tmp_path):
    path, network = saved
    older = load_unhype(rewrite(path, str(tmp_path / "older.safetensors"),
                                {"unhype.gate_threshold": None}))
    assert older.info.gate_threshold is None
    assert older.info == dataclasses.replace(network.info, gate_threshold=None)


@pytest.mark.parametrize("key", ["unhype.config", "unhype.targets", "unhype.embedding"])
def test_missing_metadata_key(saved, tmp_path, key):
    path, _ = saved
    lacking = rewrite(path, str(tmp_path / "lacking.safetensors"), {key: None})
    assert f"metadata key {key!r} is missing" in load_error(lacking)


def test_invalid_metadata_values(saved, tmp_path):
    path, network = saved
    config = network.config.to_dict()
    target = TARGETS[0].to_dict()
    cases = [
        ("unhype.base_arch", "sd9", "base architecture 'sd9'"),
        ("unhype.config", json.dumps({**config, "rank": 0}), "rank must be positive"),
        ("unhype.config", json.dumps({**config, "rank": 2.5}), "no buildable network"),
        ("unhype.config", json.dumps({**config, "compact_code": -5, "variant": "compact"}),
         "no buildable network"),
        ("unhype.config", "5", "is not iterable"),
        ("unhype.targets", "[]", "the target list is empty"),
        ("unhype.targets", "[5]", "'int' object has no attribute 'get'"),
        ("unhype.targets", json.dumps([{**target, "in_features": -1}]), "no buildable network"),
        ("unhype.targets", json.dumps([{**target, "out_slice": [0, 99]}]), "outside its output"),
        ("unhype.embedding", json.dumps({"source": "x", "dim": 1280}), "embedding dim 1280"),
        ("unhype.embedding", "5", "unhype.embedding must be a JSON object"),
        ("unhype.training", "[1]", "unhype.training must be a JSON object"),
        ("unhype.activation_reference", '"high"', "could not convert"),
        ("unhype.gate_threshold", '"high"', "must be a number >= 0 or null"),
        ("unhype.gate_threshold", "-1", "must be a number >= 0 or null"),
        ("unhype.gate_threshold", "NaN", "must be a number >= 0 or null"),
    ]
    for key, value, expected in cases:
        bad = rewrite(path, str(tmp_path / "bad.safetensors"), {key: value})
        message = load_error(bad)
        assert "invalid UnHype metadata" in message and expected in message, (key, message)


def test_metadata_disagreeing_with_tensors(saved, tmp_path):
    path, network = saved
    config = network.config.to_dict()
    ranked = rewrite(path, str(tmp_path / "rank.safetensors"),
                     {"unhype.config": json.dumps({**config, "rank": 3})})
    message = load_error(ranked)
    assert "tensors disagree with the metadata" in message
    assert "down0_0 is [2, 12], the metadata implies [3, 12]" in message

    dropped = rewrite(path, str(tmp_path / "drop.safetensors"), drop=["down0_1"])
    message = load_error(dropped)
    assert "tensors disagree with the metadata" in message and "missing tensors ['down0_1']" in (
        message
    )

    extra = rewrite(path, str(tmp_path / "extra.safetensors"), tensors={"stray": torch.ones(2)})
    assert "unexpected tensors ['stray']" in load_error(extra)

    other = "compact" if network.config.variant == "paper" else "paper"
    swapped = rewrite(path, str(tmp_path / "variant.safetensors"),
                      {"unhype.config": json.dumps({**config, "variant": other})})
    assert "tensors disagree with the metadata" in load_error(swapped)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_tensor(saved, tmp_path, bad_value):
    path, network = saved
    alpha = network.module.alpha.detach().clone()
    alpha[1] = bad_value
    poisoned = rewrite(path, str(tmp_path / "nan.safetensors"), tensors={"alpha": alpha})
    assert "tensor alpha contains NaN or infinity" in load_error(poisoned)


def test_huge_but_finite_tensor_loads(saved, tmp_path):
    """The cheap finite check (a sum) overflows here; the exact check must still accept it."""
    path, network = saved
    alpha = torch.full_like(network.module.alpha, 3e38)
    huge = rewrite(path, str(tmp_path / "huge.safetensors"), tensors={"alpha": alpha})
    assert torch.equal(load_unhype(huge).module.alpha, alpha)


def test_read_header_does_not_load_tensors(saved, monkeypatch):
    path, _ = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("read_header loaded a tensor")

    monkeypatch.setattr(fileformat, "safe_open", _NoTensors(forbidden))
    metadata, shapes = read_header(path)
    assert metadata["format"] == "unhype" and shapes


class _NoTensors:
    """Wraps safe_open so that get_tensor raises."""

    def __init__(self, forbidden):
        self.forbidden = forbidden

    def __call__(self, *args, **kwargs):
        handle = safe_open(*args, **kwargs)
        forbidden = self.forbidden

        class Guard:
            def __enter__(self):
                self.inner = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def __getattr__(self, name):
                if name == "get_tensor":
                    return forbidden
                return getattr(self.inner, name)

        return Guard()
