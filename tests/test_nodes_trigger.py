"""The "cond-pooled" trigger in a real ComfyUI: the network reads the conditioning the model
reads, so every chunk of a long prompt and every Concat part reaches it without an UnHype node
having seen the part (the pooled-vector trigger's two holes), and a wrong model says so."""

import logging

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    CONCEPT,
    FILLER,
    forget_parts,
    host,
    make_network,
    make_tiny_clip,
    merged_reference,
    node,
)

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

ORDINARY = "a red brick house under a clear sky"
WIDTH = 64  # the tiny CLIP's and the tiny UNet's context width


@pytest.fixture(autouse=True)
def _forget():
    forget_parts()
    yield
    forget_parts()


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip()


@pytest.fixture(scope="module")
def tiny():
    return ch.build_tiny_sd1_model(host()[0], seed=0)


@pytest.fixture(scope="module")
def network(tiny):
    return make_network(tiny.model.diffusion_model, embed_dim=2 * WIDTH, seed=4,
                        trigger="cond-pooled", trigger_skip=1)


def encode(clip, text):
    return ch.run_node(host()[0].nodes.CLIPTextEncode, clip=clip, text=text)[0]


def condition(conditioning, network):
    return ch.run_node(node("UnHypeConditioner"), conditioning=conditioning, unhype=network)


def packed(conditioning):
    return conditioning[0][1]["model_conds"]["unhype_embedding"].cond[:, 1:]


def reference_trigger(cond):
    """Independent of unhype/trigger.py: mean and max of the rows after the start token."""
    rows = cond[0, 1:].double()
    return torch.cat([rows.sum(0) / rows.shape[0], rows.max(0).values]).float()[None]


def test_the_start_token_is_the_only_row_every_prompt_shares(clip):
    core = host()[2]
    conds = [encode(clip, text)[0][0][0] for text in ("a photo", "red", ORDINARY)]
    assert core.trigger.shared_rows(conds) == 1


def test_a_concat_part_no_unhype_node_saw_reaches_the_network(tiny, clip, network, caplog):
    joined = ch.run_node(host()[0].nodes.ConditioningConcat,
                         conditioning_to=encode(clip, ORDINARY),
                         conditioning_from=encode(clip, CONCEPT))[0]
    with caplog.at_level(logging.WARNING):
        positive, report = condition(joined, network)
    assert "NOT SEEN" not in report and "WARNING" not in report
    assert not any("NOT SEEN" in r.getMessage() for r in caplog.records)
    expected = reference_trigger(joined[0][0])
    torch.testing.assert_close(packed(positive), expected, rtol=1e-5, atol=1e-6)
    ordinary = reference_trigger(encode(clip, ORDINARY)[0][0])
    assert (expected - ordinary).abs().max() > 1e-3  # the concept part changed the trigger

    # the sampled row equals an independent merged-weight model for that trigger
    ns = host()[0]
    negative = condition(encode(clip, ""), network)[0]
    calls = []

    def spy(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        calls.append((x, t, c_crossattn, list(transformer_options["cond_or_uncond"]), out))
        return out

    spied = tiny.clone()
    spied.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    patched = node("UnHypeApplyDynamicLoRA").execute(spied, network, 1.0, "conditional only")[0]
    ch.sample_steps(ns, patched, positive, negative, steps=1)
    x, t, context, order, out = calls[0]
    row = order.index(0)
    reference = merged_reference(tiny.model, network, expected, 1.0)
    with torch.no_grad():
        wanted = reference.apply_model(x[row:row + 1], t[row:row + 1],
                                       c_crossattn=context[row:row + 1])
    torch.testing.assert_close(out[row:row + 1], wanted, rtol=1e-4, atol=1e-5)


def test_a_concept_after_the_first_chunk_reaches_the_network(clip, network):
    long_prompt = encode(clip, f"{FILLER} {CONCEPT}")
    assert long_prompt[0][0].shape[1] == 154
    conditioned, report = condition(long_prompt, network)
    assert "NOT SEEN" not in report
    torch.testing.assert_close(packed(conditioned), reference_trigger(long_prompt[0][0]),
                               rtol=1e-5, atol=1e-6)
    first_chunk = reference_trigger(encode(clip, FILLER)[0][0])
    assert (packed(conditioned) - first_chunk).abs().max() > 1e-3

    via_text_encode, report = ch.run_node(node("UnHypeTextEncode"), clip=clip,
                                          text=f"{FILLER} {CONCEPT}", unhype=network)
    torch.testing.assert_close(packed(via_text_encode), packed(conditioned))


def test_conditioning_of_another_width_is_refused_with_both_named(tiny, clip):
    wide = make_network(tiny.model.diffusion_model, embed_dim=2 * 96, seed=4,
                        trigger="cond-pooled", trigger_skip=1)
    with pytest.raises(ValueError,
                       match=r"reads the 96-wide text conditioning.*shape \[1, 77, 64\]"):
        condition(encode(clip, ORDINARY), wide)
