"""Target presets on fake module trees named like ComfyUI's SD UNet and Flux; resolve_targets."""

import re

import pytest
import torch
from torch import nn

from unhype.hypernet import RowFactors
from unhype.lora import row_lora
from unhype.targets import (
    TARGET_PRESETS,
    Target,
    TargetMismatchError,
    resolve_targets,
    targets_from_preset,
)

# SD1.x transformer blocks (ComfyUI names) and their width level; widths scaled down.
SD_INPUT_LEVELS = ((1, 0), (2, 0), (4, 1), (5, 1), (7, 2), (8, 2))
SD_BLOCKS = (
    [(f"input_blocks.{i}.1", level) for i, level in SD_INPUT_LEVELS]
    + [("middle_block.1", 2)]
    + [(f"output_blocks.{i}.1", 2 - (i - 3) // 3) for i in range(3, 12)]
)
SD_WIDTHS, SD_CONTEXT = (4, 8, 16), 6
FLUX_HIDDEN, FLUX_MLP = 6, 24


def build_tree(layers: dict[str, nn.Module]) -> nn.Module:
    """An nn.Module tree with submodules at the given dotted names."""
    root = nn.Module()
    for name, layer in layers.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer)
    return root


def sd_unet() -> nn.Module:
    layers = {"time_embed.0": nn.Linear(4, 16), "input_blocks.0.0": nn.Conv2d(4, 4, 3)}
    for block, level in SD_BLOCKS:
        width = SD_WIDTHS[level]
        layers[f"{block}.norm"] = nn.GroupNorm(2, width)
        layers[f"{block}.proj_in"] = nn.Linear(width, width)
        prefix = f"{block}.transformer_blocks.0"
        for attn, kv_in in (("attn1", width), ("attn2", SD_CONTEXT)):
            layers[f"{prefix}.{attn}.to_q"] = nn.Linear(width, width, bias=False)
            layers[f"{prefix}.{attn}.to_k"] = nn.Linear(kv_in, width, bias=False)
            layers[f"{prefix}.{attn}.to_v"] = nn.Linear(kv_in, width, bias=False)
            layers[f"{prefix}.{attn}.to_out"] = nn.Sequential(nn.Linear(width, width), nn.Dropout())
        layers[f"{prefix}.ff.net.0.proj"] = nn.Linear(width, 8 * width)
        layers[f"{prefix}.ff.net.2"] = nn.Linear(4 * width, width)
        layers[f"{prefix}.norm2"] = nn.LayerNorm(width)
        layers[f"{block}.proj_out"] = nn.Linear(width, width)
    layers["out.2"] = nn.Conv2d(4, 4, 3)
    return build_tree(layers)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))


def flux(double: int = 2, single: int = 3) -> nn.Module:
    h = FLUX_HIDDEN
    layers = {
        "img_in": nn.Linear(4, h),
        "time_in.in_layer": nn.Linear(8, h),
        "vector_in.in_layer": nn.Linear(12, h),
        "txt_in": nn.Linear(10, h),
    }
    for i in range(double):
        p = f"double_blocks.{i}"
        for stream in ("img", "txt"):
            layers[f"{p}.{stream}_mod.lin"] = nn.Linear(h, 6 * h)
            layers[f"{p}.{stream}_attn.qkv"] = nn.Linear(h, 3 * h)
            layers[f"{p}.{stream}_attn.norm.query_norm"] = RMSNorm(h // 2)
            layers[f"{p}.{stream}_attn.proj"] = nn.Linear(h, h)
            layers[f"{p}.{stream}_mlp"] = nn.Sequential(
                nn.Linear(h, FLUX_MLP), nn.GELU(), nn.Linear(FLUX_MLP, h)
            )
    for i in range(single):
        p = f"single_blocks.{i}"
        layers[f"{p}.linear1"] = nn.Linear(h, 3 * h + FLUX_MLP)
        layers[f"{p}.linear2"] = nn.Linear(h + FLUX_MLP, h)
        layers[f"{p}.modulation.lin"] = nn.Linear(h, 3 * h)
    layers["final_layer.linear"] = nn.Linear(h, 4)
    return build_tree(layers)


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("preset", ["sd-cross-kv", "sdxl-cross-kv"])
def test_sd_cross_kv(preset):
    model = sd_unet()
    targets = targets_from_preset(model, preset)
    expected = [f"{block}.transformer_blocks.0.attn2.to_{kv}" for block, _ in SD_BLOCKS
                for kv in ("k", "v")]
    assert [t.name for t in targets] == expected
    assert len(targets) == 32
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k" in expected
    for target, (_, level) in zip(targets, [b for b in SD_BLOCKS for _ in "kv"], strict=True):
        assert target.in_features == SD_CONTEXT
        assert target.out_features == target.delta_features == SD_WIDTHS[level]
        assert target.out_slice is None
    assert resolve_targets(model, targets)["middle_block.1.transformer_blocks.0.attn2.to_v"] is (
        model.get_submodule("middle_block.1.transformer_blocks.0.attn2.to_v")
    )


def test_sd_all_attn():
    model = sd_unet()
    names = [t.name for t in targets_from_preset(model, "sd-all-attn")]
    expected = [n for n in linear_names(model)
                if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", n)]
    assert names == expected and len(names) == 16 * 2 * 4
    assert not any("ff." in n or "proj_in" in n or "time_embed" in n for n in names)


def test_flux_value_out():
    model = flux()
    targets = targets_from_preset(model, "flux-value-out")
    by_name = {t.name: t for t in targets}
    h = FLUX_HIDDEN
    expected = {}
    for i in range(2):
        expected[f"double_blocks.{i}.img_attn.qkv"] = (h, 3 * h, (2 * h, 3 * h))
        expected[f"double_blocks.{i}.img_attn.proj"] = (h, h, None)
        expected[f"double_blocks.{i}.txt_attn.qkv"] = (h, 3 * h, (2 * h, 3 * h))
    for i in range(3):
        expected[f"single_blocks.{i}.linear1"] = (h, 3 * h + FLUX_MLP, (2 * h, 3 * h))
    assert {n: (t.in_features, t.out_features, t.out_slice) for n, t in by_name.items()} == (
        expected
    )
    # Module order, and nothing else (txt_attn.proj, mlps, modulation, linear2 are not targets).
    assert [t.name for t in targets] == [n for n in linear_names(model) if n in expected]
    assert by_name["single_blocks.0.linear1"].delta_features == h


def test_flux_v_slice_is_comfyuis_v():
    """A delta on the v slice changes only v when the output is split the way ComfyUI does."""
    model = flux(double=1, single=1)
    h = FLUX_HIDDEN
    targets = [t for t in targets_from_preset(model, "flux-value-out") if t.out_slice]
    factors = {
        t.name: RowFactors(torch.randn(2, 2, t.in_features), torch.randn(2, t.delta_features, 2))
        for t in targets
    }
    x = torch.randn(2, 5, h)
    qkv = model.get_submodule("double_blocks.0.img_attn.qkv")
    linear1 = model.get_submodule("single_blocks.0.linear1")
    with torch.no_grad():
        base = (qkv(x), linear1(x))
        with row_lora(model, targets, factors):
            hooked = (qkv(x), linear1(x))
    # flux/layers.py: q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3)
    q0, k0, v0 = base[0].unflatten(-1, (3, -1)).unbind(-2)
    q1, k1, v1 = hooked[0].unflatten(-1, (3, -1)).unbind(-2)
    assert torch.equal(q0, q1) and torch.equal(k0, k1) and not torch.equal(v0, v1)
    # single block: qkv, mlp = torch.split(linear1(x), [3 * hidden, mlp_hidden], dim=-1)
    (qkv0, mlp0), (qkv1, mlp1) = (torch.split(o, [3 * h, FLUX_MLP], -1) for o in (base[1],
                                                                               hooked[1]))
    assert torch.equal(mlp0, mlp1)
    q0, k0, v0 = qkv0.unflatten(-1, (3, -1)).unbind(-2)
    q1, k1, v1 = qkv1.unflatten(-1, (3, -1)).unbind(-2)
    assert torch.equal(q0, q1) and torch.equal(k0, k1) and not torch.equal(v0, v1)


def test_preset_descriptions_and_unknown_preset():
    assert {"sd-cross-kv", "sd-all-attn", "sdxl-cross-kv", "flux-value-out"} <= set(TARGET_PRESETS)
    assert all(p.description for p in TARGET_PRESETS.values())
    with pytest.raises(ValueError, match=r"unknown target preset 'sd-everything'.*sd-cross-kv"):
        targets_from_preset(sd_unet(), "sd-everything")


def test_preset_matching_nothing_says_so():
    with pytest.raises(ValueError, match="flux-value-out.*matches no Linear layer"):
        targets_from_preset(sd_unet(), "flux-value-out")
    with pytest.raises(ValueError, match="sd-cross-kv.*matches no Linear layer"):
        targets_from_preset(flux(), "sd-cross-kv")


def test_resolve_targets_fails_once_with_every_problem():
    model = sd_unet()
    good = targets_from_preset(model, "sd-cross-kv")
    block = "input_blocks.1.1.transformer_blocks.0"
    wanted = good[:3] + [
        Target("input_blocks.99.1.transformer_blocks.0.attn2.to_k", SD_CONTEXT, 4),
        Target(f"{block}.attn2.to_v", 768, 4),  # wrong in_features
        Target(f"{block}.attn1.to_q", 4, 320),  # wrong out_features
        Target(f"{block}.norm2", 4, 4),  # exists, not a Linear
        Target("nowhere", 1, 1),
    ]
    with pytest.raises(TargetMismatchError) as caught:
        resolve_targets(model, wanted)
    message = str(caught.value)
    assert "5 of 8 UnHype targets do not fit" in message
    assert "missing: input_blocks.99.1.transformer_blocks.0.attn2.to_k" in message
    assert "missing: nowhere" in message
    assert f"shape: {block}.attn2.to_v is 6->4, the network expects 768->4" in message
    assert f"shape: {block}.attn1.to_q is 4->4, the network expects 4->320" in message
    assert f"not a Linear: {block}.norm2 is a LayerNorm" in message
    assert isinstance(caught.value, ValueError)


def test_resolve_targets_shortens_long_lists():
    targets = [Target(f"missing.{i}", 1, 1) for i in range(20)]
    with pytest.raises(TargetMismatchError, match=r"20 of 20[\s\S]*\.\.\. and 8 more"):
        resolve_targets(flux(), targets)


def test_target_dict_round_trip_and_bad_slice():
    for target in (Target("a.b", 3, 9, (6, 9)), Target("c", 4, 5)):
        assert Target.from_dict(target.to_dict()) == target
    for bad in ((6, 10), (5, 5), (-1, 3)):
        with pytest.raises(ValueError, match="outside its output"):
            Target.from_dict({"name": "x", "in_features": 3, "out_features": 9,
                              "out_slice": list(bad)})
