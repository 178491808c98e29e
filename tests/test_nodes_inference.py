"""Inference nodes in-process on tiny random models built with ComfyUI's own classes."""

import copy
import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    call_model,
    dynamic_state,
    forget_parts,
    hooks_left,
    host,
    make_network,
    merged_reference,
    node,
    packed,
)

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

D = 64  # pooled width of the tiny prompts (= the tiny UNet's context width)


@pytest.fixture(scope="module")
def tiny():
    return ch.build_tiny_sd1_model(host()[0], seed=0)


@pytest.fixture(scope="module")
def network(tiny):
    return make_network(tiny.model.diffusion_model, embed_dim=D, seed=1)


def batch(rows=3, seed=0, size=8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, size, size, generator=gen)
    sigma = torch.full((rows,), 2.0)
    context = torch.randn(rows, 77, D, generator=gen)
    pooled = torch.randn(rows, D, generator=gen)
    return x, sigma, context, pooled


def apply(model, network, strength=1.0, mode="conditional only"):
    return node("UnHypeApplyDynamicLoRA").execute(model, network, strength, mode)[0]


def reference_row(tiny, network, row, x, sigma, context, pooled, strength):
    ref = merged_reference(tiny.model, network, pooled[row:row + 1], strength)
    with torch.no_grad():
        return ref.apply_model(x[row:row + 1], sigma[row:row + 1],
                               c_crossattn=context[row:row + 1])


@pytest.mark.parametrize("mode", ["conditional only", "all rows"])
def test_mixed_batch_rows_match_merged_reference(tiny, network, mode):
    """Two prompts + a negative in ONE call: each row equals its own merged-weight model."""
    x, sigma, context, pooled = batch()
    patched = apply(tiny, network, 0.7, mode)
    # chunk order as calc_cond_batch may give it: negative first, then the two positives
    out = call_model(patched, x, sigma, context, packed(pooled), cond_or_uncond=[1, 0, 0])
    base = call_model(tiny, x, sigma, context)
    for row in (1, 2):
        expected = reference_row(tiny, network, row, x, sigma, context, pooled, 0.7)
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5)
        assert (out[row] - base[row]).abs().max() > 1e-3  # the LoRA does something
    if mode == "conditional only":
        assert torch.equal(out[0], base[0])  # the negative runs the base model, bit for bit
    else:
        expected = reference_row(tiny, network, 0, x, sigma, context, pooled, 0.7)
        torch.testing.assert_close(out[0:1], expected, rtol=1e-4, atol=1e-5)
    assert hooks_left(tiny.model) == []


def test_batch_of_two_per_chunk(tiny, network):
    """Chunks of B=2 rows (batch-2 latent): uncond chunk rows untouched, cond rows own LoRA."""
    x, sigma, context, pooled = batch(rows=4, seed=3)
    patched = apply(tiny, network)
    out = call_model(patched, x, sigma, context, packed(pooled), cond_or_uncond=[0, 1])
    base = call_model(tiny, x, sigma, context)
    assert torch.equal(out[2:], base[2:])
    for row in (0, 1):
        expected = reference_row(tiny, network, row, x, sigma, context, pooled, 1.0)
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5)


def test_rows_without_unhype_data_are_base(tiny, network):
    x, sigma, context, pooled = batch()
    patched = apply(tiny, network, mode="all rows")
    base = call_model(tiny, x, sigma, context)
    assert torch.equal(call_model(patched, x, sigma, context), base)  # no key at all
    emb = packed(pooled)
    emb[1, 0] = 0.0  # flag off on row 1
    out = call_model(patched, x, sigma, context, emb, cond_or_uncond=[0, 0, 0])
    assert torch.equal(out[1], base[1])
    assert not torch.equal(out[0], base[0])


def test_no_hooks_left_after_exception(tiny, network):
    x, sigma, context, pooled = batch()
    patched = apply(tiny, network, mode="all rows")
    wrong_context = torch.randn(3, 77, D + 1)  # fails inside attn2 while the hooks are attached
    with pytest.raises(RuntimeError):
        call_model(patched, x, sigma, wrong_context, packed(pooled), cond_or_uncond=[0, 0, 0])
    assert hooks_left(tiny.model) == []


def test_apply_does_not_touch_the_input_model(tiny, network):
    before = {k: list(v) for k, v in tiny.wrappers.items()}
    patched = apply(tiny, network)
    assert patched is not tiny
    assert {k: list(v) for k, v in tiny.wrappers.items()} == before
    assert len(dynamic_state(patched)) == 1
    state = dynamic_state(patched)[0]
    assert copy.deepcopy({"wrappers": [state]})["wrappers"][0] is state  # shared, not copied


def test_conditioner_packs_embedding_without_mutating(network):
    forget_parts()
    pooled = torch.randn(1, D)
    two_chunks = torch.randn(1, 154, D)
    two_chunks[0, 77] = two_chunks[0, 0]  # the second chunk opens as CLIP's chunks do
    cond = [[two_chunks, {"pooled_output": pooled, "strength": 0.5,
                          "model_conds": {"other": "x"}}],
            [torch.randn(1, 77, D), {"pooled_output": pooled * 2}]]
    snapshot = [dict(e[1]) for e in cond]
    out = node("UnHypeConditioner").execute(cond, network)
    result, report = out.result
    assert out.ui == {"text": [report]}
    assert [dict(e[1]) for e in cond] == snapshot  # input dicts untouched
    assert "unhype_embedding" not in cond[0][1]["model_conds"]
    for entry, source in zip(result, (pooled, pooled * 2)):
        emb = entry[1]["model_conds"]["unhype_embedding"].cond
        assert emb.shape == (1, D + 1) and emb.dtype == torch.float32
        assert emb[0, 0] == 1.0 and torch.equal(emb[:, 1:], source)
        assert torch.equal(entry[1]["pooled_output"], source)  # the model's own input unchanged
    assert result[0][1]["model_conds"]["other"] == "x" and result[0][1]["strength"] == 0.5
    lines = report.splitlines()
    assert lines[1].startswith("entry 1: 2 chunks, 154 tokens")
    assert "chunk 2 of 2 (tokens 78-154): NOT SEEN" in lines[3]
    assert lines[4].startswith("entry 2: raw LoRA norm")
    assert lines[5].startswith("WARNING") and "UnHype Text Encode" in lines[5]


def test_conditioner_errors_name_both_sides(network):
    sdxl_like = [[torch.randn(1, 77, 2048), {"pooled_output": torch.randn(1, 1280)}]]
    with pytest.raises(ValueError) as error:
        node("UnHypeConditioner").execute(sdxl_like, network)
    message = str(error.value)
    assert "UnHype Conditioner" in message and "64-d" in message and "1280-d" in message
    assert "SDXL" in message
    with pytest.raises(ValueError, match="no pooled_output"):
        node("UnHypeConditioner").execute([[torch.randn(1, 77, D), {}]], network)


def test_mismatched_model_is_a_clear_error(network):
    ns = host()[0]
    other = ch.build_tiny_sd1_model(ns, seed=0, unet_config={"context_dim": 96})
    with pytest.raises(ValueError) as error:
        apply(other, network)
    message = str(error.value)
    assert "Apply Dynamic LoRA" in message and "sd1" in message and "SD15" in message
    assert "attn2.to_k" in message and "64" in message and "96" in message


def conditioned(network, seed):
    pos = ch.make_cond(context_dim=D, seed=seed)
    neg = ch.make_cond(context_dim=D, seed=seed + 1)
    run = node("UnHypeConditioner").execute
    return run(pos, network)[0], run(neg, network)[0]


class CallLog:
    """An APPLY_MODEL wrapper that records each model call's rows and chunk order."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options,
                 **kwargs):
        self.calls.append((x.shape[0], list(transformer_options.get("cond_or_uncond", [])),
                           "unhype_embedding" in kwargs))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def test_full_sample_cond_and_uncond_in_one_call(tiny, network):
    ns = host()[0]
    pos, neg = conditioned(network, seed=10)
    base = ch.sample_steps(ns, tiny, pos, neg, steps=3)
    patched = apply(tiny, network, 1.0, "conditional only")
    log = CallLog()
    patched.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "log", log)
    calls = []
    state = dynamic_state(patched)[0]
    handle = state.network.module.register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        out = ch.sample_steps(ns, patched, pos, neg, steps=3)
    finally:
        handle.remove()
    assert torch.isfinite(out).all() and not torch.equal(out, base)
    assert len(log.calls) == 3  # one model call per step: cond and uncond batched together
    assert all(rows == 2 and sorted(order) == [0, 1] and has for rows, order, has in log.calls)
    assert calls == [1]  # one hypernetwork pass for the one conditional prompt, not one per step
    assert hooks_left(tiny.model) == []
    # the original patcher still samples exactly as before
    assert torch.equal(ch.sample_steps(ns, tiny, pos, neg, steps=3), base)


def test_factors_once_per_distinct_embedding_all_rows(tiny, network):
    ns = host()[0]
    pos, neg = conditioned(network, seed=20)
    patched = apply(tiny, network, 1.0, "all rows")
    state = dynamic_state(patched)[0]
    rows = []
    handle = state.network.module.register_forward_hook(
        lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        ch.sample_steps(ns, patched, pos, neg, steps=4)
        ch.sample_steps(ns, patched, pos, neg, steps=2, seed=5)  # same prompts, new run: cached
    finally:
        handle.remove()
    assert rows == [2] and state.cache.hypernet_calls == 1


def test_clone_isolation_with_sibling_branch(tiny, network):
    """A sibling clone of the same checkpoint (another branch of the graph) is unaffected."""
    ns = host()[0]
    pos, neg = conditioned(network, seed=30)
    sibling = tiny.clone()
    before = ch.sample_steps(ns, sibling, pos, neg, steps=2)
    patched = apply(tiny, network, 2.0, "all rows")
    ch.sample_steps(ns, patched, pos, neg, steps=2)
    assert torch.equal(ch.sample_steps(ns, sibling, pos, neg, steps=2), before)


def lora_state_dict(tiny, name, seed=7, rank=2):
    """A kohya-style LoRA on one Linear of the tiny UNet and its merged delta."""
    module = tiny.model.diffusion_model.get_submodule(name)
    gen = torch.Generator().manual_seed(seed)
    up = torch.randn(module.out_features, rank, generator=gen) * 0.3
    down = torch.randn(rank, module.in_features, generator=gen) * 0.3
    key = "lora_unet_" + name.replace(".", "_")
    sd = {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
          f"{key}.alpha": torch.tensor(float(rank))}
    return sd, up @ down


@pytest.mark.parametrize("order", ["lora first", "lora after"])
def test_composes_with_ordinary_lora(tiny, network, order):
    ns = host()[0]
    name = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    sd, delta = lora_state_dict(tiny, name)
    if order == "lora first":
        with_lora = ns.sd.load_lora_for_models(tiny, None, sd, 1.0, 0.0)[0]
        patched = apply(with_lora, network, 0.8, "all rows")
    else:
        patched = ns.sd.load_lora_for_models(apply(tiny, network, 0.8, "all rows"), None, sd,
                                             1.0, 0.0)[0]
    assert len(dynamic_state(patched)) == 1
    ns.model_management.load_models_gpu([patched])  # patches the LoRA into the weights
    try:
        x, sigma, context, pooled = batch(rows=2, seed=4)
        out = call_model(patched, x, sigma, context, packed(pooled), cond_or_uncond=[0, 0])
    finally:
        ns.model_management.unload_all_models()
    for row in (0, 1):
        ref = merged_reference(tiny.model, network, pooled[row:row + 1], 0.8, {name: delta})
        with torch.no_grad():
            expected = ref.apply_model(x[row:row + 1], sigma[row:row + 1],
                                       c_crossattn=context[row:row + 1])
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5)
    # after unloading, the shared module is back to the base weights
    base = call_model(tiny, *batch(rows=2, seed=4)[:3])
    ref0 = merged_reference(tiny.model, network, torch.zeros(1, D), 0.0)
    with torch.no_grad():
        torch.testing.assert_close(base, ref0.apply_model(*batch(rows=2, seed=4)[:2],
                                                          c_crossattn=batch(rows=2, seed=4)[2]))


def test_two_apply_nodes_stack(tiny, network):
    """Two Apply Dynamic LoRA nodes (different networks) both see the embedding and both apply."""
    other = make_network(tiny.model.diffusion_model, embed_dim=D, seed=9)
    x, sigma, context, pooled = batch(rows=2, seed=6)
    patched = apply(apply(tiny, network, 0.5, "all rows"), other, 1.5, "all rows")
    assert len(dynamic_state(patched)) == 2
    out = call_model(patched, x, sigma, context, packed(pooled), cond_or_uncond=[0, 1])
    for row in (0, 1):
        factors = other.factors(pooled[row:row + 1])
        deltas = {name: 1.5 * f.up[0] @ f.down[0] for name, f in factors.items()}
        ref = merged_reference(tiny.model, network, pooled[row:row + 1], 0.5, deltas)
        with torch.no_grad():
            expected = ref.apply_model(x[row:row + 1], sigma[row:row + 1],
                                       c_crossattn=context[row:row + 1])
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5)
    assert hooks_left(tiny.model) == []


def test_conditional_only_follows_the_guiders_positive(tiny, network):
    """The guider's own positive/negative lists decide, not the chunk index: DualCFG passes
    [negative, middle, positive] and Self-Attention Guidance runs the negative alone as chunk 0."""
    x, sigma, context, pooled = batch()
    patched = apply(tiny, network)
    base = call_model(tiny, x, sigma, context)
    options = {"unhype_positive_uuids": frozenset({"p"}), "unhype_negative_uuids": frozenset({"n"}),
               "uuids": ["n", "m", "p"]}
    out = call_model(patched, x, sigma, context, packed(pooled), cond_or_uncond=[0, 1, 2],
                     transformer_options_extra=options)
    assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])
    expected = reference_row(tiny, network, 2, x, sigma, context, pooled, 1.0)
    torch.testing.assert_close(out[2:3], expected, rtol=1e-4, atol=1e-5)
    sag = {**options, "uuids": ["n"]}  # the negative alone, labelled 0
    out = call_model(patched, x[:1], sigma[:1], context[:1], packed(pooled[:1]),
                     cond_or_uncond=[0], transformer_options_extra=sag)
    assert torch.equal(out, call_model(tiny, x[:1], sigma[:1], context[:1]))


class Spy:
    """Outer APPLY_MODEL wrapper: keeps each call's inputs and output."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options,
                 **kwargs):
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self.calls.append((x, t, c_crossattn, list(transformer_options["uuids"]), kwargs, out))
        return out


def test_dual_cfg_guider_gives_lora_to_the_positive_only(tiny, network):
    ns = host()[0]
    from comfy_extras.nodes_custom_sampler import Guider_DualCFG

    run = node("UnHypeConditioner").execute
    pos, middle, neg = (run(ch.make_cond(D, seed=s), network)[0] for s in (40, 41, 42))
    spy = Spy()
    spied = tiny.clone()
    spied.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    patched = apply(spied, network)  # "unhype" runs inside "spy"
    guider = Guider_DualCFG(patched)
    guider.set_conds(pos, middle, neg)
    guider.set_cfg(3.0, 2.0, nested=True)
    latent = torch.zeros(1, 4, 8, 8)
    sigmas = ns.samplers.calculate_sigmas(tiny.get_model_object("model_sampling"), "normal", 2)
    sampler = ns.samplers.sampler_object("euler")
    guider.sample(ns.sample.prepare_noise(latent, 0), latent, sampler, sigmas, disable_pbar=True,
                  seed=0)
    x, t, context, uuids, kwargs, out = spy.calls[0]
    assert x.shape[0] == 3  # one call for negative, middle and positive
    positive = {c["uuid"] for c in guider.original_conds["positive"]}
    base = call_model(tiny, x, t, context)
    for row, uuid in enumerate(uuids):
        if uuid in positive:
            assert not torch.equal(out[row], base[row])
        else:
            assert torch.equal(out[row], base[row])
    assert sum(u in positive for u in uuids) == 1


class RowSpy:
    """Outer APPLY_MODEL wrapper: each call's chunk order and output."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options,
                 **kwargs):
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self.calls.append((list(transformer_options["cond_or_uncond"]), c_crossattn.shape[1], out))
        return out


def first_call_rows(patched, positive, negative, cfg):
    """{0: positive row, 1: negative row} of the first model call of a real sampling run."""
    ns = host()[0]
    spy = RowSpy()
    spied = patched.clone()
    spied.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy", spy)
    ch.sample_steps(ns, spied, positive, negative, steps=1, cfg=cfg)
    order, tokens, out = spy.calls[0]
    return {kind: out[order.index(kind)] for kind in order}, tokens


@pytest.mark.parametrize("mode", ["conditional only", "all rows"])
def test_binding_cap_row_ignores_a_longer_companion(tiny, mode):
    """A 77-token positive batched with a 154-token negative (ComfyUI repeats the positive's
    context to 154 tokens): with a cap that binds, its row equals the positive sampled alone."""
    run = node("UnHypeConditioner").execute
    positive = ch.make_cond(D, tokens=77, seed=50)
    long_negative = ch.make_cond(D, tokens=154, seed=51)
    free = make_network(tiny.model.diffusion_model, embed_dim=D, seed=1)
    core = host()[2]
    factors = free.factors(positive[0][1]["pooled_output"])
    norms = torch.stack([core.row_lora_delta(positive[0][0], factors[t.name], torch.ones(1))
                         .norm() for t in free.targets])
    cap = float(norms.median())
    network = make_network(tiny.model.diffusion_model, embed_dim=D, seed=1, norm_cap=cap)
    assert 0 < int((norms > cap).sum()) < len(norms)  # the cap binds on some layers, not all
    pos, neg = run(positive, network)[0], run(long_negative, network)[0]
    patched = apply(tiny, network, 1.0, mode)

    batched, tokens = first_call_rows(patched, pos, neg, cfg=5.0)
    assert tokens == 154 and sorted(batched) == [0, 1]  # one call, the positive repeated
    alone, tokens = first_call_rows(patched, pos, neg, cfg=1.0)  # cfg 1: the positive alone
    assert tokens == 77 and list(alone) == [0]
    base, _ = first_call_rows(tiny, pos, neg, cfg=1.0)
    assert (alone[0] - base[0]).abs().max() > 1e-3  # the capped LoRA does something
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-6)
    if mode == "all rows":  # the long negative's own row: its own 154 tokens, as when alone
        neg_alone, _ = first_call_rows(patched, neg, pos, cfg=1.0)
        torch.testing.assert_close(batched[1], neg_alone[0], rtol=1e-5, atol=1e-6)


def managed_patchers(patcher, network):
    ns = host()[0]
    key = sys.modules[host()[1].__name__ + ".nodes.sampling.patch"].ADDITIONAL_MODELS_KEY
    return [p for p in patcher.get_additional_models_with_key(key)
            if p.model is network.module and isinstance(p, ns.model_patcher.ModelPatcher)]


def test_hypernetwork_is_loaded_by_comfyui_memory_management(tiny, network):
    """The network's own module is an additional model of the patched MODEL: ComfyUI's KSampler
    loads it (current_loaded_models, sized in full) and the wrapper runs it there, no copy."""
    ns = host()[0]
    mm = ns.comfy.model_management
    pos, neg = conditioned(network, seed=40)
    patched = apply(tiny, network, 1.0, "conditional only")
    assert len(managed_patchers(patched, network)) == 1 and not managed_patchers(tiny, network)
    assert len(managed_patchers(apply(patched, network, 0.5, "all rows"), network)) == 1
    seen = []

    def during_sampling(executor, *args, **kwargs):
        seen.append([lm.model for lm in mm.current_loaded_models if lm.model is not None])
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "spy",
                                 during_sampling)
    used = []
    handle = network.module.register_forward_hook(lambda m, a, out: used.append(m))
    try:
        latent = {"samples": torch.zeros(1, 4, 8, 8)}
        ch.run_node(ns.nodes.KSampler, model=patched, seed=0, steps=2, cfg=5.0,
                    sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
                    latent_image=latent, denoise=1.0)
    finally:
        handle.remove()
    loaded = [m for m in seen[0] if m.model is network.module]
    assert loaded and loaded[0].model_size() == mm.module_size(network.module)
    assert loaded[0].loaded_size() == loaded[0].model_size()
    assert used == [network.module]  # one pass, on the shared module itself
    assert not any(isinstance(v, torch.nn.Module) for v in vars(dynamic_state(patched)[0]).values())
    assert dynamic_state(patched)[0].cache._on_device == {}  # released when sampling ended


def test_hypernetwork_patcher_is_resident_whole_or_not_at_all(tiny, network):
    """Plain Linear layers cannot be cast per call: ComfyUI offering part of the network's size
    loads none of it, a partial unload unloads all of it (never a module split over devices)."""
    patcher = managed_patchers(apply(tiny, network), network)[0].clone()
    cpu, size = torch.device("cpu"), patcher.model_size()
    try:
        patcher.load(cpu, lowvram_model_memory=size // 2)
        assert patcher.loaded_size() == 0
        patcher.load(cpu, lowvram_model_memory=size)
        assert patcher.loaded_size() == size
        assert patcher.partially_unload(cpu, memory_to_free=1) == size
        assert patcher.loaded_size() == 0
    finally:
        patcher.detach()


def test_factor_cache_is_bounded_in_bytes(network):
    """Per-prompt factors are kept on the CPU up to a byte budget; a batch's own prompts stay."""
    from unhype.factors import FactorCache

    cpu = torch.device("cpu")
    probe = FactorCache(network)
    probe.select(torch.randn(1, D), cpu, torch.float32)
    one = probe._factor_bytes
    cache = FactorCache(network, cache_bytes=2 * one)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        cache.select(torch.randn(1, D, generator=gen), cpu, torch.float32)
    assert len(cache._factors) == 2 and cache._factor_bytes == 2 * one
    assert cache.hypernet_calls == 5
    cache.select(torch.randn(3, D, generator=gen), cpu, torch.float32)
    assert len(cache._factors) == 3 and cache.hypernet_calls == 6
    assert all(f.down.device == cpu for entry in cache._factors.values() for f in entry.values())
