"""Gradient checkpointing through a frozen UNet (nodes/training/grad_checkpoint.py, pure
PyTorch): the same gradients for the LoRA factors as without it, far fewer bytes kept for the
backward."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from unhype.hypernet import RowFactors
from unhype.lora import row_lora
from unhype.targets import targets_from_preset
from unhype.world.tiny_unet import TinyUNet

_PATH = Path(__file__).resolve().parent.parent / "nodes" / "training" / "grad_checkpoint.py"
_SPEC = importlib.util.spec_from_file_location("unhype_grad_checkpoint", _PATH)
gc = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gc)


def saved_bytes(fn):
    """Bytes autograd keeps for the backward while fn() runs (fn returns a loss)."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return loss, sum(total)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = TinyUNet().eval().requires_grad_(False)
    with torch.no_grad():  # the last conv starts at zero: give the output some gradient
        model.out[-1].weight.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("cap", [None, 0.5])
def test_same_factor_gradients_with_and_without_checkpointing(unet, cap):
    targets = targets_from_preset(unet, "sd-cross-kv")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    t = torch.tensor([300, 700])
    context = torch.randn(2, 8, 128, generator=gen)

    def grads(checkpointed):
        factors = {tg.name: RowFactors(
            (torch.randn(2, 2, tg.in_features, generator=gen.manual_seed(2)) * 0.2)
            .requires_grad_(True),
            (torch.randn(2, tg.delta_features, 2, generator=gen.manual_seed(3)) * 0.2)
            .requires_grad_(True)) for tg in targets}

        def loss():
            with row_lora(unet, targets, factors, norm_cap=cap):
                return unet(x, t, context).pow(2).mean()

        if checkpointed:
            with gc.gradient_checkpointing(unet) as count:
                value, kept = saved_bytes(loss)
            assert count == 16  # 11 ResBlocks, 5 SpatialTransformers
        else:
            value, kept = saved_bytes(loss)
        value.backward()  # after row_lora's hooks are gone: the recomputation puts them back
        return value, kept, [g for f in factors.values() for g in (f.down.grad, f.up.grad)]

    plain, plain_kept, plain_grads = grads(False)
    ckpt, ckpt_kept, ckpt_grads = grads(True)
    torch.testing.assert_close(ckpt, plain)
    for a, b in zip(ckpt_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert ckpt_kept < plain_kept / 3
    assert all("forward" not in vars(b) for b in gc.checkpoint_blocks(unet))
    assert not any(m._forward_hooks for m in unet.modules())


class ResBlock(nn.Module):
    """Reads a dict argument the caller changes between blocks, as ComfyUI's UNet does with
    transformer_options["block"]."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x, options):
        return torch.tanh(self.linear(x)) * options["gain"]


def test_recomputation_sees_the_dict_arguments_the_forward_saw():
    torch.manual_seed(0)
    blocks = nn.ModuleList([ResBlock(), ResBlock()]).requires_grad_(False)
    x = torch.randn(3, 4)

    def run(checkpointed):
        w = torch.ones(4, requires_grad=True)
        options = {}
        with gc.gradient_checkpointing(blocks) if checkpointed else torch.enable_grad():
            h = x * w
            for gain, block in zip((2.0, -3.0), blocks, strict=True):
                options["gain"] = gain
                h = block(h, options)
        options["gain"] = 100.0  # what the recomputation would read without the copy
        h.sum().backward()
        return w.grad

    torch.testing.assert_close(run(True), run(False))


def test_no_grad_runs_the_block_as_usual(unet):
    gen = torch.Generator().manual_seed(4)
    x, context = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(1, 8, 128, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        plain = unet(x, t, context)
        with gc.gradient_checkpointing(unet):
            _, kept = saved_bytes(lambda: unet(x, t, context))
            torch.testing.assert_close(unet(x, t, context), plain)
    assert kept == 0


def test_forward_restored_when_the_body_raises(unet):
    with pytest.raises(RuntimeError, match="stop"), gc.gradient_checkpointing(unet):
        assert all("forward" in vars(b) for b in gc.checkpoint_blocks(unet))
        raise RuntimeError("stop")
    assert all("forward" not in vars(b) for b in gc.checkpoint_blocks(unet))
