"""The gate (unhype/gate.py): its threshold rule, and exact zero: a prompt at or under the
threshold gets no LoRA and no hook, so its image is the base model's bit for bit, also in a
batch where other rows get a LoRA (the proving-ground UNet, through unhype_patch and FactorCache,
the nodes' own factor provider)."""

import dataclasses

import pytest
import torch

from unhype.factors import FactorCache
from unhype.gate import ERASE_SIDE, choose_threshold, triggers
from unhype.hypernet import HyperNetConfig, lora_norm
from unhype.network import NetworkInfo, UnHypeNetwork
from unhype.targets import targets_from_preset

PROMPTS = ["a red circle", "a blue square", "a green ring"]


def test_threshold_is_halfway_between_retain_and_erase_on_a_log_scale():
    threshold = choose_threshold(torch.tensor([40.0, 100.0]), torch.tensor([0.01, 0.1]))
    assert threshold == pytest.approx(2.0)  # sqrt(0.1 * 40)
    assert triggers(torch.tensor([40.0, 100.0]), threshold).all()
    assert not triggers(torch.tensor([0.01, 0.1]), threshold).any()


def test_threshold_stays_under_the_weakest_erase_prompt_when_retain_overlaps():
    """Retain prompts as strong as erase ones: every erase prompt keeps its LoRA."""
    erase, retain = torch.tensor([40.0, 100.0]), torch.tensor([0.01, 50.0])
    threshold = choose_threshold(erase, retain)
    assert threshold == pytest.approx(ERASE_SIDE * 40.0)
    assert triggers(erase, threshold).all()
    assert triggers(retain, threshold).tolist() == [False, True]


def test_the_check_is_strict_and_no_threshold_means_no_gate():
    norms = torch.tensor([0.0, 2.0, 2.0001])
    assert triggers(norms, 2.0).tolist() == [False, False, True]
    assert triggers(norms, None).all()
    assert choose_threshold(torch.zeros(0), torch.tensor([1.0])) is None
    assert choose_threshold(torch.tensor([1.0]), torch.zeros(0)) is None


def test_non_finite_norms_are_refused():
    with pytest.raises(ValueError, match="erase prompts' LoRA norms must be finite"):
        choose_threshold(torch.tensor([float("nan")]), torch.tensor([1.0]))


@pytest.fixture(scope="module")
def world():
    from unhype.world import load_world

    return load_world()


def random_network(world, seed=0) -> UnHypeNetwork:
    """A network for the world whose LoRA differs for every prompt (random weights)."""
    embed_dim = world.clip.model.ln_final.normalized_shape[0]
    config = HyperNetConfig(embed_dim=embed_dim, rank=2, hidden=16, seed=seed)
    targets = targets_from_preset(world.unet, "sd-cross-kv")
    network = UnHypeNetwork(config, targets, NetworkInfo("proving-ground", "sd-cross-kv"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    network.module.requires_grad_(False).eval()
    return network


def gated(network, threshold) -> UnHypeNetwork:
    info = dataclasses.replace(network.info, gate_threshold=float(threshold))
    return UnHypeNetwork(network.config, network.targets, info, network.module)


def norms_of(world, network, prompts):
    return lora_norm(network.factors(world.denoiser.embed(prompts)))


def test_gated_row_is_the_base_model_bit_for_bit_next_to_rows_with_a_lora(world):
    from unhype.world.erasure import generate, unhype_patch

    network = random_network(world)
    norms = norms_of(world, network, PROMPTS)
    weakest, *others = norms.argsort().tolist()
    network = gated(network, (norms[weakest] + norms[others[0]]) / 2)
    base = generate(world, PROMPTS, seed=0, steps=4)
    after = generate(world, PROMPTS, seed=0, patch=unhype_patch(world, network), steps=4)
    assert torch.equal(after[weakest], base[weakest])
    for row in others:
        assert not torch.equal(after[row], base[row])  # the LoRA rows do get their LoRA
    ungated = generate(world, PROMPTS, seed=0, steps=4,
                       patch=unhype_patch(world, gated(network, 0.0)))
    assert not torch.equal(ungated[weakest], base[weakest])  # without the gate it would differ


def test_no_hook_at_all_when_no_row_triggers(world):
    from unhype.world.erasure import unhype_patch

    network = random_network(world)
    network = gated(network, 2 * float(norms_of(world, network, PROMPTS).max()))
    patch = unhype_patch(world, network)
    rows = PROMPTS + [""] * len(PROMPTS)
    with patch(rows, torch.arange(len(rows)) < len(PROMPTS)):
        hooked = [name for name, m in world.unet.named_modules() if m._forward_hooks]
    assert hooked == []


def test_factor_cache_leaves_out_gated_rows(world):
    network = random_network(world)
    embeddings = world.denoiser.embed(PROMPTS + PROMPTS[:1])
    norms = lora_norm(network.factors(embeddings))
    strongest = int(norms.argmax())
    threshold = float(norms.max() + norms.min()) / 2
    cache = FactorCache(gated(network, threshold))
    kept, factors = cache.select(embeddings, torch.device("cpu"), torch.float32)
    assert kept.tolist() == [i for i, norm in enumerate(norms.tolist()) if norm > threshold]
    assert strongest in kept.tolist() and cache.hypernet_calls == 1  # one pass, 3 distinct rows
    reference = network.factors(embeddings[kept])
    for name, f in factors.items():
        torch.testing.assert_close(f.up, reference[name].up)
    none, no_factors = FactorCache(gated(network, norms.max())).select(
        embeddings, torch.device("cpu"), torch.float32)
    assert none.numel() == 0 and no_factors is None
