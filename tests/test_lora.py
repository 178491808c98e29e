"""Per-row dynamic LoRA against an independent merged-weight reference, and hook hygiene.

The reference never uses `row_lora` or `row_lora_delta`: for each batch row b it copies the
model in float64, merges W + scale_b * (up_b @ down_b) into the weight (into the slice's rows for
a sliced target) and runs that row alone.
"""

import copy

import pytest
import torch
from torch import nn

from unhype.hypernet import RowFactors
from unhype.lora import row_lora, row_lora_delta
from unhype.targets import Target

IN, HID, OUT, RANK = 12, 16, 8, 3

TARGETS = [
    Target("attn2.to_k", IN, HID),
    Target("attn2.to_v", IN, HID),
    # A fused q,k,v projection: only the last third (v) gets the delta.
    Target("qkv", HID, 3 * HID, (2 * HID, 3 * HID)),
    Target("proj", HID, OUT),
]

# Hooked forward vs the float64 merged reference: max |error| / max |reference output|.
# Inputs, weights and factors are first rounded to the dtype under test, so the bound measures
# the computation, not the rounding of the operands. Measured on CPU (torch 2.11; 2-D, 3-D with
# 5 and 77 tokens; 10 seeds each; the model chains 4 targets): worst fp32 4.8e-7, fp16 2.8e-3,
# bf16 1.7e-2 (the unhooked base model alone: 2.3e-7, 7.3e-4, 6.6e-3). Bounds = worst * ~2-4.
ERROR_BOUNDS = {torch.float32: 2e-6, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# Scales exactly representable in every dtype tested, so rounding them costs nothing.
SCALES = torch.tensor([1.0, 0.5, -0.75, 2.0])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_k = nn.Linear(IN, HID)
        self.to_v = nn.Linear(IN, HID)


class Toy(nn.Module):
    """Several Linear targets in a chain, one of them fused q,k,v with a v-only delta."""

    def __init__(self):
        super().__init__()
        self.attn2 = Attention()
        self.qkv = nn.Linear(HID, 3 * HID)
        self.proj = nn.Linear(HID, OUT)

    def forward(self, x):
        h = torch.tanh(self.attn2.to_k(x)) * self.attn2.to_v(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        return torch.cat([self.proj(torch.tanh(q) + v), k], dim=-1)


def make_model(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def make_factors(rows: int, seed: int = 1, size: float = 0.4) -> dict[str, RowFactors]:
    generator = torch.Generator().manual_seed(seed)
    return {
        t.name: RowFactors(
            size * torch.randn(rows, RANK, t.in_features, generator=generator),
            size * torch.randn(rows, t.delta_features, RANK, generator=generator),
        )
        for t in TARGETS
    }


def merged_reference(model, targets, factors, scales, x, rows=None):
    """Each LoRA row alone through a float64 copy of the model with its delta merged in."""
    rows = list(range(x.shape[0])) if rows is None else list(rows)
    outputs = {}
    for lora_row, batch_row in enumerate(rows):
        merged = copy.deepcopy(model).double()
        with torch.no_grad():
            for target in targets:
                f = factors[target.name]
                delta = scales[lora_row].double() * (
                    f.up[lora_row].double() @ f.down[lora_row].double()
                )
                low, high = target.out_slice or (0, target.out_features)
                merged.get_submodule(target.name).weight[low:high] += delta
            outputs[batch_row] = merged(x[batch_row : batch_row + 1].double())[0]
    return outputs


def no_hooks_anywhere(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
    )


def rounded(factors, dtype):
    return {n: RowFactors(f.down.to(dtype).float(), f.up.to(dtype).float())
            for n, f in factors.items()}


def relative_error(model, x, factors, scales, rows=None):
    """Worst error of the hooked forward against the merged reference, over LoRA rows."""
    with torch.no_grad(), row_lora(model, TARGETS, factors, rows=rows, scale=scales):
        hooked = model(x)
    base_model = copy.deepcopy(model).double()
    worst = 0.0
    with torch.no_grad():
        reference = merged_reference(base_model, TARGETS, factors, scales, x, rows)
        for batch_row, expected in reference.items():
            got = hooked[batch_row].double()
            worst = max(worst, float((got - expected).abs().max() / expected.abs().max()))
            # The delta must matter, or this comparison would prove nothing.
            plain = base_model(x[batch_row : batch_row + 1].double())[0]
            assert float((plain - expected).abs().max() / expected.abs().max()) > 0.05
    return worst, hooked


@pytest.mark.parametrize("dtype", list(ERROR_BOUNDS), ids=str)
@pytest.mark.parametrize("tokens", [None, 5], ids=["2d", "3d"])
def test_matches_merged_reference(dtype, tokens):
    rows = len(SCALES)
    model = make_model().to(dtype)
    shape = (rows, IN) if tokens is None else (rows, tokens, IN)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    factors = rounded(make_factors(rows), dtype)
    error, hooked = relative_error(model, x, factors, SCALES)
    assert hooked.dtype == dtype and hooked.shape == (*shape[:-1], OUT + HID)
    assert error <= ERROR_BOUNDS[dtype], f"{dtype}: relative error {error:.3g}"


def test_scalar_scale_equals_per_row_scale():
    model = make_model()
    x = torch.randn(3, 4, IN)
    factors = make_factors(3)
    with torch.no_grad():
        with row_lora(model, TARGETS, factors, scale=0.5):
            scalar = model(x)
        with row_lora(model, TARGETS, factors, scale=torch.full((3,), 0.5)):
            per_row = model(x)
    assert torch.equal(scalar, per_row)


@pytest.mark.parametrize("dtype", list(ERROR_BOUNDS), ids=str)
def test_unselected_rows_are_bit_identical(dtype):
    model = make_model().to(dtype)
    x = torch.randn(5, 3, IN).to(dtype)
    lora_rows = [3, 1]  # out of order on purpose: LoRA row 0 belongs to batch row 3
    factors = rounded(make_factors(2), dtype)
    scales = SCALES[:2]
    with torch.no_grad():
        base = model(x)
        error, hooked = relative_error(model, x, factors, scales, rows=lora_rows)
    for row in (0, 2, 4):
        assert torch.equal(hooked[row], base[row]), row
    for row in lora_rows:
        assert not torch.equal(hooked[row], base[row]), row
    assert error <= ERROR_BOUNDS[dtype]


@pytest.mark.parametrize("dtype", list(ERROR_BOUNDS), ids=str)
def test_slice_leaves_other_columns_bit_identical(dtype):
    model = make_model().to(dtype)
    target = TARGETS[2]
    h = torch.randn(4, 6, HID).to(dtype)
    factors = {target.name: make_factors(4)[target.name]}
    with torch.no_grad():
        base = model.qkv(h)
        with row_lora(model, [target], factors, scale=SCALES):
            hooked = model.qkv(h)
    assert torch.equal(hooked[..., : 2 * HID], base[..., : 2 * HID])
    changed = (hooked[..., 2 * HID :] != base[..., 2 * HID :]).float().mean()
    assert changed > 0.9


def test_no_lora_rows_is_the_base_model():
    model = make_model()
    x = torch.randn(2, IN)
    empty = {t.name: RowFactors(torch.zeros(0, RANK, t.in_features),
                                torch.zeros(0, t.delta_features, RANK)) for t in TARGETS}
    with torch.no_grad(), row_lora(model, TARGETS, empty, rows=[]):
        assert no_hooks_anywhere(model)
        assert torch.equal(model(x), make_model()(x))


def test_norm_cap_in_row_lora_delta():
    generator = torch.Generator().manual_seed(3)
    rows, cap = 6, 2.0
    x = torch.randn(rows, 5, IN, generator=generator, dtype=torch.float64)
    sizes = torch.tensor([0.01, 0.02, 1.0, 3.0, 0.05, 10.0], dtype=torch.float64)
    factors = RowFactors(
        torch.randn(rows, RANK, IN, generator=generator, dtype=torch.float64),
        torch.randn(rows, HID, RANK, generator=generator, dtype=torch.float64)
        * sizes[:, None, None],
    )
    scale = torch.tensor([1.0, -2.0, 1.0, 0.5, 3.0, -1.0])
    free = row_lora_delta(x, factors, scale)
    capped = row_lora_delta(x, factors, scale, norm_cap=cap)
    free_norms = free.flatten(1).norm(dim=1)
    capped_norms = capped.flatten(1).norm(dim=1)
    under = free_norms <= cap
    assert 0 < int(under.sum()) < rows, "the test needs rows on both sides of the cap"
    # The cap is applied in float32: allow its rounding, nothing more.
    assert (capped_norms <= cap * (1 + 1e-6)).all(), capped_norms
    assert torch.equal(capped[under], free[under])
    torch.testing.assert_close(capped_norms[~under], torch.full_like(capped_norms[~under], cap))
    # Capping shrinks, it does not turn: same direction as the free output.
    cosine = (capped[~under] * free[~under]).flatten(1).sum(1) / (
        capped_norms[~under] * free_norms[~under]
    )
    torch.testing.assert_close(cosine, torch.ones_like(cosine))


def test_norm_cap_is_measured_over_one_copy_of_repeated_tokens():
    """ComfyUI repeats a shorter context to batch it with a longer one: the capped output of
    each copy must equal the row's capped output alone (which is what the attention sees)."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, IN, generator=generator, dtype=torch.float64)
    factors = RowFactors(torch.randn(2, RANK, IN, generator=generator, dtype=torch.float64),
                         torch.randn(2, HID, RANK, generator=generator, dtype=torch.float64))
    scale = torch.tensor([1.0, -0.5])
    cap = 0.5 * float(row_lora_delta(x, factors, scale).flatten(1).norm(dim=1).min())
    alone = row_lora_delta(x, factors, scale, norm_cap=cap)
    for copies in (2, 3):
        repeated = row_lora_delta(x.repeat(1, copies, 1), factors, scale, norm_cap=cap)
        for k in range(copies):
            torch.testing.assert_close(repeated[:, 7 * k : 7 * (k + 1)], alone)
    # a row whose own tokens repeat counts the same alone and repeated again
    periodic = x[:, :1].repeat(1, 6, 1)
    torch.testing.assert_close(row_lora_delta(periodic.repeat(1, 2, 1), factors, scale,
                                              norm_cap=cap)[:, :6],
                               row_lora_delta(periodic, factors, scale, norm_cap=cap))
    # nearly repeated is not repeated: the whole row is measured
    almost = x.repeat(1, 2, 1)
    almost[0, -1, 0] += 1e-9
    norms = row_lora_delta(almost, factors, scale, norm_cap=cap).flatten(1).norm(dim=1)
    assert norms[0].item() == pytest.approx(cap) and norms[1].item() == pytest.approx(2**0.5 * cap)


def test_norm_cap_through_hooks_and_slices():
    model = make_model().double()
    target = TARGETS[2]
    h = torch.randn(4, 3, HID, dtype=torch.float64)
    factors = {target.name: make_factors(4, size=1.0)[target.name]}
    factors[target.name].up[[0, 2]] *= 1e-3  # rows 0 and 2 stay under the cap
    cap = 1.0
    with torch.no_grad():
        base = model.qkv(h)
        with row_lora(model, [target], factors, scale=SCALES):
            free = model.qkv(h) - base
        with row_lora(model, [target], factors, scale=SCALES, norm_cap=cap):
            capped = model.qkv(h) - base
    norms = capped.flatten(1).norm(dim=1)
    assert (norms <= cap * (1 + 1e-6)).all(), norms
    assert (free[[1, 3]].flatten(1).norm(dim=1) > cap).all()
    assert torch.equal(capped[[0, 2]], free[[0, 2]])
    assert torch.count_nonzero(capped[..., : 2 * HID]) == 0


def test_hooks_removed_after_block():
    model = make_model()
    with row_lora(model, TARGETS, make_factors(2)):
        assert len(model.qkv._forward_hooks) == 1
        model(torch.randn(2, IN))
    assert no_hooks_anywhere(model)


def test_hooks_removed_when_a_hook_raises():
    model = make_model()
    with pytest.raises(ValueError, match="attn2.to_k got a batch of 3 rows but factors for 2"):
        with row_lora(model, TARGETS, make_factors(2)):
            model(torch.randn(3, IN))
    assert no_hooks_anywhere(model)
    with pytest.raises(ValueError, match="LoRA rows go up to 4"):
        with row_lora(model, TARGETS, make_factors(2), rows=[0, 4]):
            model(torch.randn(3, IN))
    assert no_hooks_anywhere(model)


def test_hooks_removed_on_user_exception():
    model = make_model()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with row_lora(model, TARGETS, make_factors(2)):
            model(torch.randn(2, IN))
            raise Boom
    assert no_hooks_anywhere(model)


def test_hooks_removed_when_setup_fails():
    model = make_model()
    partial = make_factors(2)
    del partial["proj"]  # the last target has no factors: fails after three hooks are attached
    with pytest.raises(KeyError):
        with row_lora(model, TARGETS, partial):
            pass
    assert no_hooks_anywhere(model)
    with pytest.raises(ValueError, match="3 LoRA rows named for factors of 2 rows"):
        with row_lora(model, TARGETS, make_factors(2), rows=[0, 1, 2]):
            pass
    for rows in ([1, 1], [0, -1]):
        with pytest.raises(ValueError, match="LoRA rows must be distinct batch rows >= 0"):
            with row_lora(model, TARGETS, make_factors(2), rows=rows):
                pass
    assert no_hooks_anywhere(model)


def test_gradients_match_merged_autograd():
    model = make_model().requires_grad_(False)
    rows = 3
    x = torch.randn(rows, 4, IN)
    weight = torch.randn(rows, 4, OUT + HID)  # a fixed random loss direction
    leaves = {n: RowFactors(f.down.requires_grad_(), f.up.requires_grad_())
              for n, f in make_factors(rows).items()}
    with row_lora(model, TARGETS, leaves, scale=SCALES[:rows]):
        (model(x) * weight).sum().backward()

    reference = {n: RowFactors(f.down.detach().double().requires_grad_(),
                               f.up.detach().double().requires_grad_())
                 for n, f in leaves.items()}
    base = copy.deepcopy(model).double()
    for b in range(rows):
        merged = copy.deepcopy(base)
        weights = {}
        for t in TARGETS:
            module = merged.get_submodule(t.name)
            f = reference[t.name]
            low, high = t.out_slice or (0, t.out_features)
            delta = SCALES[b].double() * (f.up[b] @ f.down[b])
            w = module.weight.detach().clone()
            weights[t.name] = torch.cat([w[:low], w[low:high] + delta, w[high:]])
        out = torch.func.functional_call(
            merged, {f"{n}.weight": w for n, w in weights.items()}, (x[b : b + 1].double(),)
        )
        (out * weight[b : b + 1].double()).sum().backward()

    for name, f in leaves.items():
        for got, want in ((f.down.grad, reference[name].down.grad),
                          (f.up.grad, reference[name].up.grad)):
            assert got is not None and torch.count_nonzero(got) > 0, name
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in model.parameters())
