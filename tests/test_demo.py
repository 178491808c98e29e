"""The demo, shortened: erasure in the proving ground is real, and the other colours survive."""

import json

import pytest
from PIL import Image

from unhype import load_unhype
from unhype.demo import run_demo

pytestmark = pytest.mark.slow


def test_short_demo_erases_red_and_keeps_other_colours(tmp_path):
    metrics = run_demo(concept="red", out=str(tmp_path), steps=600, samples=32, seed=0)
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
