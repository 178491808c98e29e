"""A random-weight checkpoint that ComfyUI's CheckpointLoaderSimple detects as SD1.5, cached."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .tiny_models import TINY_SD1_UNET_CONFIG, is_norm_weight

FIXTURE_CACHE = Path(
    os.environ.get("UNHYPE_FIXTURE_CACHE", Path.home() / ".cache" / "unhype" / "fixtures")
)


SD15_CKPT_VERSION = "sd15-rand-v1"

# UNet: same block layout and module names as SD1.5 (model_channels 320, context 768, 16
# transformer blocks), but channel_mult [1,1,1,1] keeps it at ~90M params instead of 860M.
# ComfyUI's detection reads the layout from the weights and matches SD15 on model_channels,
# context_dim, use_linear_in_transformer, adm_in_channels.
SD15_LAYOUTS = {
    "sd15": {"channel_mult": [1, 1, 1, 1]},
    "full": {"channel_mult": [1, 2, 4, 4]},  # the real 860M SD1.5 UNet shape
    "min": {  # one level: input_blocks.1/2, middle, output_blocks.0-2 only
        "channel_mult": [1],
        "num_res_blocks": [2],
        "transformer_depth": [1, 1],
        "transformer_depth_output": [1, 1, 1],
    },
}


def sd15_unet_config(layout: str) -> dict:
    """The UNet config of the random checkpoint in one of SD15_LAYOUTS."""
    cfg = dict(TINY_SD1_UNET_CONFIG)
    cfg.update({"model_channels": 320, "context_dim": 768, "num_heads": 8, "num_head_channels": -1})
    cfg.update(SD15_LAYOUTS[layout])
    n = len(cfg["channel_mult"])
    if len(cfg["num_res_blocks"]) != n:
        cfg["num_res_blocks"] = [2] * n
    return cfg


def _meta_state_dict(module_factory) -> dict[str, tuple[tuple[int, ...], str]]:
    import torch

    with torch.device("meta"):
        m = module_factory()
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in m.state_dict().items()}


def sd15_checkpoint_shapes(layout: str = "sd15", vae: str = "taesd") -> dict[str, tuple]:
    """{key: (shape, torch dtype str)} of an SD1.5-format checkpoint, computed from ComfyUI's own
    classes on the meta device. ComfyUI must already be imported (import_comfy)."""
    import json as _json

    import comfy.clip_model
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops
    import torch

    ops = comfy.ops.disable_weight_init
    unet_cfg = sd15_unet_config(layout)
    shapes = {}
    for k, v in _meta_state_dict(lambda: oai.UNetModel(**unet_cfg, operations=ops)).items():
        shapes["model.diffusion_model." + k] = v

    clip_cfg_path = Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json"
    clip_cfg = _json.loads(clip_cfg_path.read_text())
    clip_sd = _meta_state_dict(
        lambda: comfy.clip_model.CLIPTextModel(clip_cfg, torch.float32, None, ops)
    )
    for k, v in clip_sd.items():
        if k.startswith("text_projection") or k.startswith("logit_scale"):
            continue
        shapes["cond_stage_model.transformer." + k] = v
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ((1, 77), "int64")

    if vae == "taesd":
        import comfy.taesd.taesd as taesd

        vae_sd = _meta_state_dict(lambda: taesd.TAESD(latent_channels=4))
    elif vae == "full":
        import comfy.ldm.models.autoencoder as ae

        ddconfig = {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
            "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [],
            "dropout": 0.0,
        }
        vae_sd = _meta_state_dict(lambda: ae.AutoencoderKL(ddconfig=ddconfig, embed_dim=4))
    else:
        raise ValueError(f"vae must be 'taesd' or 'full', not {vae!r}")
    for k, v in vae_sd.items():
        shapes["first_stage_model." + k] = v
    return shapes


def make_sd15_checkpoint(path: Path, seed: int = 0, layout: str = "sd15", vae: str = "taesd",
                         dtype: str = "float16") -> Path:
    """Write a random-weight checkpoint that CheckpointLoaderSimple detects as SD1.5."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (shape, src_dtype) in sorted(sd15_checkpoint_shapes(layout, vae).items()):
        if k.endswith("position_ids"):
            sd[k] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
            continue
        if src_dtype not in ("torch.float32", "torch.float16", "torch.bfloat16"):
            sd[k] = torch.zeros(shape, dtype=getattr(torch, src_dtype.split(".")[1]))
            continue
        if is_norm_weight(k, shape):
            t = torch.ones(shape, dtype=tdtype)
        elif k.endswith("bias") or len(shape) == 0 and "vae_shift" in k:
            t = torch.zeros(shape, dtype=tdtype)
        elif len(shape) == 0:  # e.g. taesd vae_scale
            t = torch.ones(shape, dtype=tdtype)
        else:
            t = (torch.randn(shape, generator=gen) * 0.02).to(tdtype)
        sd[k] = t.contiguous()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(sd, str(tmp), metadata={"unhype_fixture": f"{SD15_CKPT_VERSION}/{layout}/{vae}"})
    os.replace(tmp, path)
    return path


def cached_sd15_checkpoint(seed: int = 0, layout: str = "sd15", vae: str = "taesd",
                           cache_dir: Path | None = None) -> Path:
    """Path to a cached random SD1.5 checkpoint (generated on first use)."""
    key = hashlib.sha1(f"{SD15_CKPT_VERSION}-{seed}-{layout}-{vae}".encode()).hexdigest()[:10]
    cache_dir = Path(cache_dir or FIXTURE_CACHE)
    path = cache_dir / f"unhype-test-sd15-{layout}-{vae}-{key}.safetensors"
    if not path.is_file():
        lock = path.with_suffix(".lock")
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - windows
                pass
            if not path.is_file():
                make_sd15_checkpoint(path, seed=seed, layout=layout, vae=vae)
    return path
