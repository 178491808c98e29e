"""Tiny models built with ComfyUI's own classes, and random conditioning for them."""

from __future__ import annotations

TINY_SD1_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "context_dim": 64,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
    "use_checkpoint": False,
}

# The 16 SD1.x transformer blocks (module paths under model.model.diffusion_model).
SD1_TRANSFORMER_BLOCKS = (
    [f"input_blocks.{i}.1.transformer_blocks.0" for i in (1, 2, 4, 5, 7, 8)]
    + ["middle_block.1.transformer_blocks.0"]
    + [f"output_blocks.{i}.1.transformer_blocks.0" for i in range(3, 12)]
)


def is_norm_weight(name: str, shape) -> bool:
    if len(shape) != 1 or not name.endswith("weight"):
        return False
    n = name.lower()
    return "norm" in n or n.endswith("ln_1.weight") or n.endswith("ln_2.weight")


def fill_random_(module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministically fill every parameter/buffer of ``module`` (comfy.ops leaves them
    uninitialised): norm weights 1, biases 0, other weights N(0, std)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if is_norm_weight(name, t.shape):
                t.fill_(1.0)
            elif name.endswith("bias"):
                t.zero_()
            else:
                v = torch.randn(t.shape, generator=gen, dtype=torch.float32) * std
                t.copy_(v.to(t.dtype))


def build_tiny_sd1_model(comfy_ns, seed: int = 0, unet_config: dict | None = None):
    """A tiny SD1.x UNet built with ComfyUI's own classes; returns a ModelPatcher (CPU)."""
    import torch

    cfg = dict(TINY_SD1_UNET_CONFIG)
    if unet_config:
        cfg.update(unet_config)
    model_config = comfy_ns.supported_models.SD15(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = comfy_ns.model_base.BaseModel(model_config, device=torch.device("cpu"))
    fill_random_(model.diffusion_model, seed=seed, std=0.05)
    model.eval()
    return comfy_ns.model_patcher.ModelPatcher(
        model, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )


def make_cond(context_dim: int = 64, tokens: int = 77, seed: int = 0,
              pooled_dim: int | None = None):
    """A CONDITIONING value (list of [tensor [1,T,D], dict]) with random content, but for row 0:
    the start token's state, the same for every prompt of one width, as CLIP's (causal) output
    has it at the start of every chunk (nodes/sampling/parts.py finds joined texts by it)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(1, tokens, context_dim, generator=gen)
    pooled = torch.randn(1, pooled_dim or context_dim, generator=gen)
    t[0, 0] = torch.randn(context_dim, generator=torch.Generator().manual_seed(77))
    return [[t, {"pooled_output": pooled}]]


def sample_steps(comfy_ns, model, positive, negative, steps: int = 2, cfg: float = 5.0,
                 size: int = 8, seed: int = 0, sampler: str = "euler", scheduler: str = "normal"):
    """Run comfy.sample.sample on a random latent of [1,4,size,size]; returns the latent."""
    import torch

    latent = torch.zeros(1, 4, size, size)
    noise = comfy_ns.sample.prepare_noise(latent, seed)
    return comfy_ns.sample.sample(
        model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
        disable_pbar=True, seed=seed,
    )
