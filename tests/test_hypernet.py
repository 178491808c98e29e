"""The hypernetwork: shapes, the exact-zero start, validation, lora_norm, parameter counts."""

import importlib.util
from pathlib import Path

import pytest
import torch

from unhype.hypernet import (
    VARIANTS,
    HyperNetConfig,
    HyperNetwork,
    RowFactors,
    lora_norm,
)
from unhype.targets import Target

EMBED = 12
TARGETS = [
    Target("blocks.0.attn2.to_k", 12, 8),
    Target("blocks.0.attn2.to_v", 12, 16),
    # Fused q,k,v: only the last third (the v slice) gets a delta.
    Target("double_blocks.0.img_attn.qkv", 8, 24, (16, 24)),
    Target("single_blocks.0.linear1", 8, 40, (16, 24)),
]
REPO = Path(__file__).resolve().parent.parent


def small_config(variant: str = "paper", **overrides) -> HyperNetConfig:
    settings = dict(
        embed_dim=EMBED, rank=3, hidden=16, trajectory_length=300, fourier_dim=8,
        variant=variant, compact_trunk=16, compact_code=8, compact_layer_embed=4,
    )
    settings.update(overrides)
    return HyperNetConfig(**settings)


def perturbed(variant: str, seed: int = 0) -> HyperNetwork:
    """A network whose every parameter and buffer is random: nothing relies on init luck."""
    torch.manual_seed(seed)
    net = HyperNetwork(small_config(variant), TARGETS)
    with torch.no_grad():
        for tensor in list(net.parameters()) + list(net.buffers()):
            tensor.copy_(torch.randn_like(tensor))
    return net


def merged(factors) -> dict[str, torch.Tensor]:
    """Explicit per-row weight deltas up @ down, in float64."""
    return {n: f.up.double() @ f.down.double() for n, f in factors.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_per_target(variant):
    net = HyperNetwork(small_config(variant), TARGETS)
    rows = 5
    factors = net(torch.randn(rows, EMBED))
    assert list(factors) == [t.name for t in TARGETS]
    for target in TARGETS:
        f = factors[target.name]
        assert isinstance(f, RowFactors)
        assert f.down.shape == (rows, 3, target.in_features)
        # Sliced targets: the up factor covers the slice only.
        assert f.up.shape == (rows, target.delta_features, 3)
        assert f.down.dtype == f.up.dtype == torch.float32
    assert factors["double_blocks.0.img_attn.qkv"].up.shape[1] == 8
    assert factors["single_blocks.0.linear1"].up.shape[1] == 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_network_delta_is_zero_for_every_s(variant):
    net = HyperNetwork(small_config(variant), TARGETS)
    embeddings = torch.randn(4, EMBED)
    for s in (0, 1, 150, 300):
        for name, delta in merged(net(embeddings, s)).items():
            assert torch.count_nonzero(delta) == 0, (s, name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_delta_exactly_zero_at_s0_after_perturbing_everything(variant):
    for seed in range(3):
        net = perturbed(variant, seed)
        embeddings = torch.randn(6, EMBED) * 10.0
        factors = net(embeddings, 0)
        for name, f in factors.items():
            assert torch.count_nonzero(f.up) == 0, name
            assert torch.count_nonzero(f.up @ f.down) == 0, name
            # The down factor itself is the scaled fixed start, not zero.
            assert torch.count_nonzero(f.down) > 0, name
        assert torch.count_nonzero(lora_norm(factors)) == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_delta_nonzero_at_T_after_perturbing(variant):
    net = perturbed(variant)
    embeddings = torch.randn(3, EMBED)
    for s in (None, 300):  # None means s = T
        for name, delta in merged(net(embeddings, s)).items():
            per_row = delta.flatten(1).norm(dim=1)
            assert (per_row > 1e-3).all(), (name, per_row)
    assert (lora_norm(net(embeddings)) > 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_per_row_s_zero_rows_stay_zero(variant):
    net = perturbed(variant)
    factors = net(torch.randn(3, EMBED), torch.tensor([0.0, 300.0, 0.0]))
    for f in factors.values():
        delta = f.up @ f.down
        assert torch.count_nonzero(delta[0]) == 0 and torch.count_nonzero(delta[2]) == 0
        assert torch.count_nonzero(delta[1]) > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_are_independent(variant):
    net = perturbed(variant)
    embeddings = torch.randn(4, EMBED)
    together = net(embeddings)
    alone = net(embeddings[2:3])
    for name in together:
        # Not bitwise: a batch of 4 and a batch of 1 may take different matmul kernels.
        torch.testing.assert_close(together[name].down[2:3], alone[name].down, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(together[name].up[2:3], alone[name].up, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_embedding_dim_mismatch(variant):
    net = HyperNetwork(small_config(variant), TARGETS)
    bad_shapes = (
        torch.randn(2, EMBED + 1), torch.randn(EMBED), torch.randn(2, 1, EMBED), torch.tensor(1.0)
    )
    for bad in bad_shapes:
        with pytest.raises(ValueError, match=rf"expected embeddings \[rows, {EMBED}\]"):
            net(bad)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"variant": "huge"}, "variant must be one of"),
        ({"rank": 0}, "rank must be positive"),
        ({"hidden": -1}, "hidden must be positive"),
        ({"embed_dim": 0}, "embed_dim must be positive"),
        ({"trajectory_length": 0}, "trajectory_length must be positive"),
        ({"fourier_dim": 0}, "fourier_dim must be positive"),
        ({"fourier_dim": 7}, "fourier_dim must be even"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(**overrides)


def test_config_dict_round_trip_and_unknown_keys():
    config = small_config("compact", norm_cap=None, alpha0=0.5)
    assert HyperNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown hypernetwork settings \['bogus'\]"):
        HyperNetConfig.from_dict({**config.to_dict(), "bogus": 1})


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_norm_matches_explicit_frobenius(variant):
    net = perturbed(variant)
    factors = net(torch.randn(5, EMBED), torch.tensor([300.0, 150.0, 0.0, 37.0, 300.0]))
    explicit = torch.zeros(5, dtype=torch.float64)
    for delta in merged(factors).values():
        explicit += delta.pow(2).sum(dim=(1, 2))
    explicit = explicit.sqrt()
    got = lora_norm(factors)
    assert got.shape == (5,)
    assert explicit[2] == 0 and got[2] == 0
    torch.testing.assert_close(got.double(), explicit, rtol=1e-5, atol=1e-6)


def test_down_start_is_seeded_and_variant_independent():
    a = HyperNetwork(small_config("paper"), TARGETS)
    b = HyperNetwork(small_config("compact"), TARGETS)
    c = HyperNetwork(small_config("paper", seed=1), TARGETS)
    assert torch.equal(a.down0_0, b.down0_0)
    assert not torch.equal(a.down0_0, c.down0_0)
    assert (a.down0_0 >= 0).all() and (a.down0_0 <= 1 / 3**0.5).all()


def test_gradients_reach_every_parameter():
    for variant in VARIANTS:
        net = perturbed(variant)
        factors = net(torch.randn(2, EMBED), 200)
        lora_norm(factors).sum().backward()
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, (variant, name)


def _param_count_script():
    spec = importlib.util.spec_from_file_location("param_count", REPO / "scripts/param_count.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_counts_sd1_cross_kv():
    script = _param_count_script()
    targets = script.sd1_cross_kv_targets()
    assert len(targets) == 32 and len({t.name for t in targets}) == 32
    assert sorted({t.out_features for t in targets}) == [320, 640, 1280]
    assert "middle_block.1.transformer_blocks.0.attn2.to_v" in {t.name for t in targets}
    counts = script.counts(rank=6, hidden=512)
    # Paper variant, by hand: per layer two heads Linear(800->512)->ReLU->Linear(512->d*6).
    first = 800 * 512 + 512
    by_hand = sum(2 * first + 512 * 6 * (768 + t.out_features) + 6 * (768 + t.out_features)
                  for t in targets) + 32  # + one learned alpha per layer
    assert counts["paper"] == by_hand
    assert counts["compact"] * 10 <= counts["paper"]

