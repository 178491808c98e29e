"""One atomic write (unhype/files.py) for networks and training checkpoints: a write that fails
leaves neither a temporary file nor a half-written one, and the file that was there stays."""

import os
import re

import pytest
import torch

from unhype import files
from unhype.checkpoint import load_state, save_state
from unhype.fileformat import load_unhype, save_unhype
from unhype.hypernet import HyperNetConfig
from unhype.network import NetworkInfo, UnHypeNetwork
from unhype.targets import Target


def network(seed: int) -> UnHypeNetwork:
    config = HyperNetConfig(embed_dim=8, rank=2, hidden=4, seed=seed)
    return UnHypeNetwork(config, [Target("block.attn2.to_k", 12, 8)], NetworkInfo("sd1", "x"))


def write_network(path, seed):
    save_unhype(str(path), network(seed))


def write_checkpoint(path, seed):
    save_state(str(path), {"step": seed, "weights": torch.full((3,), float(seed))}, "test-kind")


def half_write_then_fail(tensors, filename, metadata=None):
    """What a full disk does: part of the file is on disk, then the write raises."""
    with open(filename, "wb") as handle:
        handle.write(b"\x00" * 10)
    raise OSError(28, "No space left on device")


def fail_rename(source, destination):
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("write", [write_network, write_checkpoint], ids=["network", "checkpoint"])
@pytest.mark.parametrize("failure", [("save_file", half_write_then_fail),
                                     ("os.replace", fail_rename)], ids=["write", "rename"])
def test_a_failing_write_keeps_the_previous_file_and_leaves_nothing_else(
        tmp_path, monkeypatch, write, failure):
    path = tmp_path / "kept.safetensors"
    write(path, seed=1)
    before = path.read_bytes()
    name, broken = failure
    if name == "save_file":
        monkeypatch.setattr(files, "save_file", broken)
    else:
        monkeypatch.setattr(files.os, "replace", broken)
    with pytest.raises(files.FileWriteError, match=re.escape(f"cannot write {path}: ")):
        write(path, seed=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["kept.safetensors"]  # no .partial-write, no half file
    assert path.read_bytes() == before
    write(path, seed=3)  # the next write still works
    assert os.listdir(tmp_path) == ["kept.safetensors"]


def test_written_files_read_back(tmp_path):
    write_network(tmp_path / "net.safetensors", seed=4)
    assert load_unhype(str(tmp_path / "net.safetensors")).config.seed == 4
    write_checkpoint(tmp_path / "state.safetensors", seed=5)
    assert load_state(str(tmp_path / "state.safetensors"), "test-kind")["step"] == 5
