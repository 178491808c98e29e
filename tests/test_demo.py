"""The demo, shortened: erasure in the proving ground is real, and the other colours survive."""

import json
import os

import pytest
import torch
from PIL import Image

from unhype import load_unhype
from unhype.demo import choose_cores, run_demo


@pytest.mark.slow
def test_short_demo_erases_red_and_keeps_other_colours(tmp_path):
    metrics = run_demo(concept="red", out=str(tmp_path), steps=1000, samples=32, seed=0)
    before, after = metrics["accuracy_before"], metrics["accuracy_after"]
    # The base model paints red often enough for a drop to mean something.
    assert before["erased"]["clip"] >= 0.4, before
    assert after["erased"]["clip"] <= 0.25 * before["erased"]["clip"], (before, after)
    assert after["synonyms"]["clip"] <= 0.5 * before["synonyms"]["clip"], (before, after)
    assert after["others"]["clip"] >= before["others"]["clip"] - 0.05, (before, after)
    assert after["others"]["pixel"] >= before["others"]["pixel"] - 0.05, (before, after)

    written = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("efficacy", "specificity", "generality", "h_o", "kept_identical", "seconds"):
        assert key in written
    assert written["kept_identical"] >= 0.99, written  # the gate: kept prompts give the base image
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 600 and grid.height > 500
    network = load_unhype(str(tmp_path / "erase-red.safetensors"))
    assert network.info.base_arch == "proving-ground"


@pytest.mark.slow
def test_two_cores_give_the_numbers_one_core_gives(tmp_path):
    """The second process (base model during training, half the trained model's sets) changes
    where the work runs, not what it gives: the same accuracies and network, bit for bit."""
    runs = {cores: run_demo(out=str(tmp_path / str(cores)), steps=2, samples=2, cores=cores)
            for cores in (1, 2)}
    assert runs[1]["cores"] == 1 and runs[2]["cores"] == 2
    for key in ("accuracy_before", "accuracy_after", "efficacy", "specificity", "generality"):
        assert runs[1][key] == runs[2][key], key
    one, two = (load_unhype(str(tmp_path / str(c) / "erase-red.safetensors")) for c in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one.module.state_dict().values(),
                                                 two.module.state_dict().values(), strict=True))


@pytest.mark.parametrize("load, cores", [(0.1, 2), (0.4, 2), (0.6, 1), (1.2, 1), (3.0, 1)])
def test_the_demo_keeps_a_core_for_other_work_when_the_machine_is_busy(monkeypatch, load, cores):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    chosen, why = choose_cores(None)
    assert chosen == cores and why == f"2 cores, load {load:.1f}"
    assert choose_cores(1) == (1, "--cores 1")
    assert choose_cores(4) == (2, "--cores 4, the most that helps is 2")
