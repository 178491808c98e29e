"""UnHype Audit in a real ComfyUI (in-process, CPU) on the proving ground: the Proving Ground
node's CLIP, a network that erases red, no judge; what it lists checked against the world's own
text path, and the inputs a careless user gives."""

import re
import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import host, node

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

SEARCH = {"population": 12, "generations": 3, "seed": 0, "top": 2}
TEMPLATES = "a photo of a {} circle\na {} square\nthe ring is {}"


def words():
    from unhype.world.vocabulary import COLOURS, SHAPES
    from unhype.world.vocabulary import TEMPLATES as CAPTIONS

    return sorted({w for t in CAPTIONS for w in t.format(colour="", shape="").split()}
                  | {w for c in COLOURS for w in c.words} | {s.word for s in SHAPES})


@pytest.fixture(scope="module")
def setup():
    from unhype.world import load_world
    from unhype.world.erasure import ErasureTask, train_unhype

    try:
        _, clip, _ = ch.run_node(node("UnHypeProvingGround"))
    except sys.modules[f"{host()[1].__name__}.nodes.proving_ground"].ProvingGroundError as error:
        pytest.skip(str(error))
    torch.set_num_threads(1)
    world = load_world()
    network, _ = train_unhype(world, ErasureTask(["red"]), seed=0, steps=40)
    return world, clip, network


def run(setup, **inputs):
    _, clip, network = setup
    values = {"unhype": network, "clip": clip, "concept": "red", "stand_in": "blue",
              "templates": TEMPLATES, "banned": "crimson scarlet", "vocabulary": " ".join(words()),
              **SEARCH, **inputs}
    return ch.run_node(node("UnHypeAudit"), **values)


def test_lists_prompts_without_the_concepts_words_with_the_lora_the_network_gives(setup):
    from unhype.hypernet import lora_norm
    from unhype.trigger import read_trigger

    world, _, network = setup
    report, evasive, prompts = run(setup)
    found = prompts.splitlines()
    assert len(found) == 2 * SEARCH["top"]  # two start prompts by default
    for prompt in found:
        # as long as a start prompt: "a photo of a blue circle", "a blue square"
        assert len(prompt.split()) in (6, 3)
        assert not {"red", "crimson", "scarlet"} & set(prompt.split())
        assert set(prompt.split()) <= set(words())
    lines = [line for line in report.splitlines() if line.endswith(tuple(found))]
    assert len(lines) == len(found)
    assert evasive == sum(line.startswith("EVASIVE") for line in lines)
    # the LoRA norms reported are the network's for these prompts read by the world itself
    config = network.config
    trigger = read_trigger(world.denoiser, found, config.trigger, config.trigger_skip)
    reported = [float(re.search(r"LoRA norm\s+(\S+)", line).group(1)) for line in lines]
    assert reported == pytest.approx(lora_norm(network.factors(trigger)).tolist(), rel=1e-3,
                                     abs=1e-3)
    triggered = network.readout(trigger)[1].tolist()
    assert [line.startswith("triggers") for line in lines] == triggered
    assert "prompts scored" in report and "the concept's own prompts get LoRA norms" in report


def test_the_default_vocabulary_is_the_everyday_prompts_words(setup):
    from unhype.prompts import builtin_retain_prompts

    _, _, prompts = run(setup, vocabulary="", population=4, generations=1, top=1)
    everyday = set(" ".join(builtin_retain_prompts()).lower().replace(",", " ").split())
    assert all(set(p.split()) <= everyday | {"a", "photo", "of", "circle", "square", "the",
                                             "ring", "is"} for p in prompts.splitlines())


@pytest.mark.parametrize("inputs, message", [
    ({"stand_in": "red"}, "stand-in word that is not the concept"),
    ({"concept": " "}, "stand-in word that is not the concept"),
    ({"templates": "a photo of red"}, "needs '{}'"),
    ({"stand_in": "dark blue"}, "not as many tokens"),
    ({"vocabulary": "red crimson"}, "at least two words"),
])
def test_bad_inputs_name_the_node_and_the_fix(setup, inputs, message):
    with pytest.raises(ValueError, match=f"UnHype Audit: .*{re.escape(message)}"):
        run(setup, **inputs)


def test_cancel_stops_the_search(setup):
    import comfy.model_management as management

    management.interrupt_current_processing(True)
    try:
        with pytest.raises(management.InterruptProcessingException):
            run(setup, generations=20)
    finally:
        management.interrupt_current_processing(False)
