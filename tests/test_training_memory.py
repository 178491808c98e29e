"""Training through ComfyUI's own UNet and Flux classes (ComfyDenoiser.predict): a LoRA's
backward works (Flux adds residuals in place and uses a kernel without a backward unless told it
is training), and gradient checkpointing gives the same prediction and LoRA gradients as without
it while autograd keeps a fraction of the bytes."""

import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import host, supported_model
from test_grad_checkpoint import saved_bytes
from test_nodes_models import TINY_FLUX, build

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]


class RandomClip:
    """Stand-in text encoder: fixed random conditioning per prompt, of the family's widths."""

    def __init__(self, tokens, width, pooled):
        self.tokens, self.width, self.pooled = tokens, width, pooled

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        gen = torch.Generator().manual_seed(sum(map(ord, text)) + len(text))
        return [[torch.randn(1, self.tokens, self.width, generator=gen),
                 {"pooled_output": torch.randn(1, self.pooled, generator=gen)}]]


def gradients(model, clip, family, preset, checkpointing):
    denoiser_mod = sys.modules[host()[1].__name__ + ".nodes.training.denoiser"]
    core = host()[2]
    with torch.inference_mode(False):
        denoiser = denoiser_mod.ComfyDenoiser(model, clip, sampling_steps=4, resolution=64,
                                              family=family,
                                              gradient_checkpointing=checkpointing)
        gen = torch.Generator().manual_seed(0)
        x_t = torch.randn(2, *denoiser.latent_shape, generator=gen)
        sigma = denoiser.sigmas[1:3].clone()
        targets = core.targets_from_preset(denoiser.lora_root, preset)
        factors = {t.name: core.RowFactors(
            (torch.randn(2, 2, t.in_features, generator=gen) * 0.3).requires_grad_(True),
            (torch.randn(2, t.delta_features, 2, generator=gen) * 0.3).requires_grad_(True))
            for t in targets}

        def loss():
            with core.row_lora(denoiser.lora_root, targets, factors, norm_cap=5.0):
                return denoiser.predict(x_t, sigma, ["a zebra", "a dog"]).square().mean()

        value = loss()
        value.backward()  # the row_lora hooks are gone: the recomputation brings them back
        kept = saved_bytes(loss)[1]  # another forward, only to count what autograd keeps
    mm = host()[0].model_management
    assert not mm.in_training and torch.Tensor.__iadd__ is denoiser_mod._IADD
    leftovers = [m for m in denoiser.lora_root.modules()
                 if m._forward_hooks or "forward" in vars(m)]
    assert leftovers == []
    return value.detach(), kept, [g for f in factors.values() for g in (f.down.grad, f.up.grad)]


def tiny_model(family):
    """(a tiny model of the family, a stand-in text encoder of its widths, its target preset)."""
    if family == "sd1":
        return ch.build_tiny_sd1_model(host()[0], seed=3), RandomClip(77, 64, 64), "sd-cross-kv"
    if family == "flux":
        return (build(host()[0].supported_models.Flux, TINY_FLUX, seed=3),
                RandomClip(16, 64, 768), "flux-value-out")
    if family == "flux2":
        from test_family_flux2 import TINY_FLUX2
        from test_family_flux2 import WIDTH as FLUX2_WIDTH
        return (build(supported_model("Flux2"), TINY_FLUX2, seed=3),
                RandomClip(16, FLUX2_WIDTH, 1), "flux2-text")
    if family == "zimage":
        from test_family_zimage import TINY_ZIMAGE
        from test_family_zimage import WIDTH as ZIMAGE_WIDTH
        return (build(supported_model("ZImage"), TINY_ZIMAGE, seed=3),
                RandomClip(16, ZIMAGE_WIDTH, 1), "zimage-text")
    if family == "wan":
        from test_family_wan import TEXT_WIDTH, TINY_WAN
        return (build(supported_model("WAN21_T2V"), TINY_WAN, seed=3),
                RandomClip(16, TEXT_WIDTH, 1), "wan-cross-kv")
    from test_family_qwenimage import TINY_QWEN, WIDTH
    return (build(supported_model("QwenImage"), TINY_QWEN, seed=3), RandomClip(16, WIDTH, 1),
            "qwenimage-text")


@pytest.mark.parametrize(
    "family", ["sd1", "flux", "flux2", "qwenimage", "wan", "zimage"])
def test_checkpointed_prediction_has_the_same_gradients(family):
    model, clip, preset = tiny_model(family)
    plain, plain_kept, plain_grads = gradients(model, clip, family, preset, False)
    ckpt, ckpt_kept, ckpt_grads = gradients(model, clip, family, preset, True)
    torch.testing.assert_close(ckpt, plain, rtol=1e-6, atol=0)
    scale = max(float(g.abs().max()) for g in plain_grads)
    worst = max(float((a - b).abs().max()) for a, b in zip(ckpt_grads, plain_grads, strict=True))
    assert scale > 0 and worst <= 1e-6 * scale, (worst, scale)
    assert ckpt_kept < plain_kept / 2, (ckpt_kept, plain_kept)
