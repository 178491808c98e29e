"""The gate in a real ComfyUI: Apply Dynamic LoRA adds no hook when no row of a model call
triggers the network, a gated row is the base model's bit for bit in a mixed batch and in real
sampling calls, and the Conditioner's report says which prompts are untouched."""

import dataclasses

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import call_model, dynamic_state, hooks_left, host, make_network, node, packed

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

D = 64  # pooled width of the tiny prompts (= the tiny UNet's context width)


@pytest.fixture(scope="module")
def tiny():
    return ch.build_tiny_sd1_model(host()[0], seed=0)


@pytest.fixture(scope="module")
def network(tiny):
    return make_network(tiny.model.diffusion_model, embed_dim=D, seed=1)


def with_gate(network, threshold):
    """The same network (shared module) with the gate at `threshold`."""
    core = host()[2]
    info = dataclasses.replace(network.info, gate_threshold=float(threshold))
    return core.UnHypeNetwork(network.config, network.targets, info, network.module)


def norm(network, pooled):
    return float(host()[2].lora_norm(network.factors(pooled.reshape(1, -1)))[0])


def apply(model, network, mode="all rows"):
    return node("UnHypeApplyDynamicLoRA").execute(model, network, 1.0, mode)[0]


class HookSpy:
    """A forward pre-hook on the UNet root: which modules had forward hooks at each model call."""

    def __init__(self, root):
        self.calls = []
        self.handle = root.register_forward_pre_hook(
            lambda module, args: self.calls.append(hooks_left_forward(module)))

    def close(self):
        self.handle.remove()


def hooks_left_forward(module):
    return [name for name, m in module.named_modules() if m._forward_hooks]


def conds(seed):
    return ch.make_cond(context_dim=D, seed=seed), ch.make_cond(context_dim=D, seed=seed + 1)


def conditioned(network, cond):
    return node("UnHypeConditioner").execute(cond, network)


def test_no_hook_when_every_row_is_gated_and_the_sample_is_the_base_one(tiny, network):
    ns = host()[0]
    pos, neg = conds(40)
    strongest = max(norm(network, c[0][1]["pooled_output"]) for c in (pos, neg))
    gated = with_gate(network, 2 * strongest)
    base = ch.sample_steps(ns, tiny, pos, neg, steps=3)
    patched = apply(tiny, gated)
    spy = HookSpy(tiny.model.diffusion_model)
    try:
        out = ch.sample_steps(ns, patched, conditioned(gated, pos)[0],
                              conditioned(gated, neg)[0], steps=3)
    finally:
        spy.close()
    assert len(spy.calls) == 3 and all(hooked == [] for hooked in spy.calls)
    assert dynamic_state(patched)[0].cache.hypernet_calls == 1  # the gate read both prompts
    assert torch.equal(out, base)
    # without the gate the same prompts do get a LoRA: the gate, not the prompts, made it equal
    ungated = ch.sample_steps(ns, apply(tiny, network), conditioned(network, pos)[0],
                              conditioned(network, neg)[0], steps=3)
    assert not torch.equal(ungated, base)


def test_gated_negative_is_the_base_row_in_a_real_sampling_call(tiny, network):
    """All rows mode, the positive triggers, the negative does not: at the first model call
    (the same x in both runs) the negative's row is the base model's bit for bit and only the
    positive's row has hooks."""
    ns = host()[0]
    pos, neg = conds(50)
    weak, strong = (norm(network, c[0][1]["pooled_output"]) for c in (neg, pos))
    if weak > strong:
        pos, neg, weak, strong = neg, pos, strong, weak
    gated = with_gate(network, (weak + strong) / 2)
    outputs = {}

    def record(name):
        def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options,
                    **kwargs):
            out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
            outputs.setdefault(name, (list(transformer_options["cond_or_uncond"]), out.clone()))
            return out
        return wrapper

    key = ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL
    base_model = tiny.clone()
    base_model.add_wrapper_with_key(key, "record", record("base"))
    ch.sample_steps(ns, base_model, pos, neg, steps=2)
    patched = apply(tiny, gated)
    patched.add_wrapper_with_key(key, "record", record("patched"))
    ch.sample_steps(ns, patched, conditioned(gated, pos)[0], conditioned(gated, neg)[0], steps=2)
    order, base = outputs["base"]
    assert outputs["patched"][0] == order and sorted(order) == [0, 1]
    after = outputs["patched"][1]
    negative, positive = order.index(1), order.index(0)
    assert torch.equal(after[negative], base[negative])
    assert not torch.equal(after[positive], base[positive])
    assert hooks_left(tiny.model) == []


def test_mixed_batch_gated_rows_are_base_and_others_get_their_lora(tiny, network):
    gen = torch.Generator().manual_seed(7)
    x, sigma = torch.randn(4, 4, 8, 8, generator=gen), torch.full((4,), 2.0)
    context, pooled = torch.randn(4, 77, D, generator=gen), torch.randn(4, D, generator=gen)
    norms = [norm(network, row) for row in pooled]
    threshold = sorted(norms)[1] + 1e-6  # the two weakest rows are gated
    patched, ungated = apply(tiny, with_gate(network, threshold)), apply(tiny, network)
    out = call_model(patched, x, sigma, context, packed(pooled), cond_or_uncond=[0, 0, 0, 0])
    full = call_model(ungated, x, sigma, context, packed(pooled), cond_or_uncond=[0, 0, 0, 0])
    base = call_model(tiny, x, sigma, context)
    for row, value in enumerate(norms):
        if value <= threshold:
            assert torch.equal(out[row], base[row]) and not torch.equal(full[row], base[row])
        else:  # the same LoRA as without the gate
            torch.testing.assert_close(out[row], full[row], rtol=1e-5, atol=1e-6)
            assert not torch.equal(out[row], base[row])


def test_report_says_which_prompts_are_untouched(network):
    pos, neg = conds(60)
    weak, strong = sorted(((norm(network, c[0][1]["pooled_output"]), c) for c in (pos, neg)),
                          key=lambda pair: pair[0])
    gated = with_gate(network, (weak[0] + strong[0]) / 2)
    untouched = conditioned(gated, weak[1])[1]
    assert "untouched: identical to the base model" in untouched
    assert "get no LoRA" in untouched.splitlines()[0]  # the header names the gate
    assert "gets a LoRA" in conditioned(gated, strong[1])[1]
    assert "no gate" in conditioned(network, strong[1])[1].splitlines()[0]
