"""The switch-evasion audit (unhype/audit.py) on the proving ground: a short-trained network that
erases red, the world's own text encoder, no judge model."""

import statistics

import pytest

torch = pytest.importorskip("torch")

from unhype.audit import audit  # noqa: E402
from unhype.gate import triggers  # noqa: E402
from unhype.hypernet import lora_norm  # noqa: E402
from unhype.trigger import read_trigger  # noqa: E402
from unhype.world import load_world  # noqa: E402
from unhype.world.erasure import ErasureTask, train_unhype  # noqa: E402
from unhype.world.vocabulary import COLOURS, SHAPES, TEMPLATES  # noqa: E402

SEARCH = {"population": 16, "generations": 8, "top": 3}
VOCABULARY = sorted({w for t in TEMPLATES for w in t.format(colour="", shape="").split()}
                    | {w for c in COLOURS for w in c.words} | {s.word for s in SHAPES})
RED_WORDS = COLOURS[0].words


@pytest.fixture(scope="module")
def erased_red():
    torch.set_num_threads(1)
    world = load_world()
    network, _ = train_unhype(world, ErasureTask(["red"]), seed=0, steps=50)
    pairs = [(t.format(colour="red", shape=s.word), t.format(colour="blue", shape=s.word))
             for t in TEMPLATES for s in SHAPES]
    anchors = ["a photo of a blue circle", "a photo of a green square"]
    return world, network, pairs, anchors


def norms_of(world, network, prompts):
    config = network.config
    return lora_norm(network.factors(read_trigger(world.denoiser, prompts, config.trigger,
                                                  config.trigger_skip)))


def test_audit_finds_prompts_the_trigger_reads_as_weaker_than_the_concept(erased_red):
    world, network, pairs, anchors = erased_red
    result = audit(network, world.denoiser, pairs, anchors, VOCABULARY, banned=RED_WORDS,
                   **SEARCH)
    findings = result.findings
    assert len(findings) == len(anchors) * SEARCH["top"]
    for finding in findings:
        words = finding.prompt.split()
        assert len(words) == 6 and set(words) <= set(VOCABULARY) - set(RED_WORDS)
    found = torch.tensor([f.lora_norm for f in findings])
    assert torch.allclose(found, norms_of(world, network, [f.prompt for f in findings]))
    assert [f.triggered for f in findings] == triggers(found, network.info.gate_threshold).tolist()
    assert all(f.evasive <= (not f.triggered) for f in findings)
    assert [f.evasive for f in findings] == sorted((f.evasive for f in findings), reverse=True)
    # the penalty on the readout pulls the trigger below the concept's own prompts
    erase_norms = norms_of(world, network, [p for p, _ in pairs])
    assert float(found.median()) < float(erase_norms.min())
    assert result.concept_norms == pytest.approx(erase_norms.tolist(), rel=1e-5)
    assert result.queries >= len(anchors) * SEARCH["population"]
    unpenalised = audit(network, world.denoiser, pairs, anchors, VOCABULARY, banned=RED_WORDS,
                        penalty=0.0, **SEARCH).findings
    assert float(found.mean()) < statistics.mean(f.lora_norm for f in unpenalised)
