"""The model card and the Loader's summary (unhype/card.py): what a stranger reads of a network."""

import json

import pytest

from unhype.card import ERASURE_CHECK_LINE, THREAT_MODEL, erasure_check_block, model_card, summary
from unhype.families import FAMILIES
from unhype.network import NetworkInfo

SEPARATION = {"step": 800, "erase_norm": 3.0, "retain_norm": 0.5, "residual": 0.42,
              "trigger": 6.0, "separated": True}


def info(hidden: bool, base_arch: str = "sd1") -> NetworkInfo:
    training = {"steps": 800, "objective": "trajectory", "eta": 3.0, "seed": 0,
                "concept_count": 1, "concepts_sha256": "cd" * 32, "separation": SEPARATION,
                "anchors": {} if hidden else {"zebra": ""},
                **({} if hidden else {"concepts": ["zebra"]})}
    return NetworkInfo(base_arch, "sd-cross-kv", title="my network", author="tester",
                       training=training)


@pytest.mark.parametrize("hidden", [False, True])
def test_card_says_what_for_which_model_how_measured_limits_use_licence(hidden):
    check = erasure_check_block("proving ground: pixel colour", "red", 0.95, float("nan"), 20, 0)
    card = model_card(info(hidden), file_name="red.safetensors", hash_sha256="0x" + "ab" * 32,
                      erasure_check=check)
    assert card.startswith("# my network\n")
    if hidden:
        assert "**Erases:** hidden concepts (1; SHA-256 of the list " + "cd" * 32 in card
        assert "zebra" not in card
    else:
        assert "**Erases:** zebra (-> left out)" in card
    for text in ("SD1.x", "stable-diffusion-v1/unhype", "CLIP-L pooled", "tester",
                 "0x" + "ab" * 32, "separated (erase prompts trigger 6x", "efficacy 95.0%",
                 "specificity n/a", THREAT_MODEL, "UnHype Loader", "UnHype Conditioner",
                 "Apply Dynamic LoRA", "verify_hash", FAMILIES["sd1"].licence):
        assert text in card, text
    without = model_card(info(hidden), file_name="f", hash_sha256="0x0")
    assert "No Erasure Check result" in without


def test_summary_and_the_check_block():
    lines = summary(info(False, "flux"), {"separation": SEPARATION})
    assert lines[0] == "erases: zebra (-> left out)"
    assert "Flux.1 (flux)" in lines[1] and "separated" in lines[2] and len(lines) == 3
    check = erasure_check_block("CLIP zero-shot", "a cat", 1.0, 0.5, 4, 2)
    assert json.loads(json.dumps(check)) == check
    lines = summary(info(True), {"separation": None, "erasure_check": check})
    assert lines[0].startswith("erases: hidden concepts")
    assert lines[2] == "separation check: not recorded"
    assert "efficacy 100.0% of 4" in lines[3] and "specificity 50.0% of 2" in lines[3]
    assert ERASURE_CHECK_LINE.startswith("unhype.eval erasure_check")
