"""A long-running server: Apply Dynamic LoRA run again and again (other strengths, other graphs,
MODELs dropped while the network lives on) leaves ComfyUI's loaded-model list clean, and the
network is freed when its last reference goes (real ComfyUI model management)."""

import gc
import logging
import weakref

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import host, make_network, node

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

D = 64  # pooled width of the tiny prompts (= the tiny UNet's context width)
LORA_LAYER = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"


def dead_entries():
    """Loaded-model entries whose patcher is gone while its model lives: each one costs every
    later model load a full garbage collection and a "memory leak" warning."""
    mm = host()[0].model_management
    return [type(e.real_model()).__name__ for e in mm.current_loaded_models if e.is_dead()]


def entries_of(module):
    mm = host()[0].model_management
    return [e for e in mm.current_loaded_models
            if e.real_model is not None and e.real_model() is module]


def ordinary_lora(model, seed=7):
    module = model.model.diffusion_model.get_submodule(LORA_LAYER)
    gen = torch.Generator().manual_seed(seed)
    key = "lora_unet_" + LORA_LAYER.replace(".", "_")
    return {f"{key}.lora_up.weight": torch.randn(module.out_features, 2, generator=gen) * 0.3,
            f"{key}.lora_down.weight": torch.randn(2, module.in_features, generator=gen) * 0.3,
            f"{key}.alpha": torch.tensor(2.0)}


def graphs(models, network, round_):
    """MODELs as ever-changing graphs make them from the same network: other strengths and modes,
    Apply on Apply, a model node after Apply (it clones), an ordinary LoRA after Apply, two base
    models. Each is yielded, sampled and dropped before the next is made."""
    ns = host()[0]

    def apply(model, strength, mode="conditional only"):
        return node("UnHypeApplyDynamicLoRA").execute(model, network, strength, mode)[0]

    for k, model in enumerate(models):
        strength = 0.25 * (round_ + k + 1)
        yield apply(model, strength)
        yield apply(model, -strength, "all rows")
        yield apply(apply(model, strength), strength / 2, "all rows")
        yield apply(model, strength).clone()
        yield ns.sd.load_lora_for_models(apply(model, strength), None, ordinary_lora(model),
                                         1.0, 0.0)[0]


def test_reruns_leave_no_dead_entries_and_the_network_is_freed(caplog):
    ns = host()[0]
    mm = ns.model_management
    gc.collect()  # what earlier tests left as garbage is not this test's concern
    assert dead_entries() == [], "dead loaded-model entries left before this test"
    models = [ch.build_tiny_sd1_model(ns, seed=s) for s in (0, 1)]
    network = make_network(models[0].model.diffusion_model, embed_dim=D, seed=1)
    run = node("UnHypeConditioner").execute
    positive = run(ch.make_cond(D, seed=1), network)[0]
    negative = run(ch.make_cond(D, seed=2), network)[0]
    used = []
    handle = network.module.register_forward_hook(lambda m, a, out: used.append(1))
    samplings = 0
    with caplog.at_level(logging.INFO):
        for round_ in range(3):
            for patched in graphs(models, network, round_):
                latent = ch.sample_steps(ns, patched, positive, negative, steps=1)
                assert torch.isfinite(latent).all()
                samplings += 1
                del patched
                assert dead_entries() == []
        handle.remove()
        assert samplings == 30 and used  # the network ran, so ComfyUI loaded it
        assert len(entries_of(network.module)) == 1  # one entry, not one per Apply run
        mm.load_models_gpu([models[0].clone()])  # a later model load
    leaks = [r.getMessage() for r in caplog.records if "memory leak" in r.getMessage()]
    assert leaks == []
    assert dead_entries() == []

    network_ref, module_ref = weakref.ref(network), weakref.ref(network.module)
    entries = len(mm.current_loaded_models)
    del network, run, handle
    assert network_ref() is None and module_ref() is None  # no cycle: freed without a gc pass
    assert len(mm.current_loaded_models) == entries - 1  # its entry went with it
    assert dead_entries() == []
    mm.unload_all_models()
