"""The proving-ground world of `unhype/world/` as ComfyUI objects (MODEL, CLIP, VAE).

Imported by the UnHype Proving Ground node when it runs (it pulls in open_clip, which ComfyUI
does not otherwise need at start-up). Each object reproduces the world exactly:
- MODEL: a ModelPatcher around comfy.model_base.BaseModel whose diffusion model is the world's
  TinyUNet (eps prediction); ModelSamplingDiscrete gets the world's betas (DDPM linear 1e-4..0.02
  over 1000 steps, ComfyUI's "sqrt_linear"). Latent = the 3x32x32 image in [-1, 1]; its latent
  format has 3 channels and no downscaling, so EmptyLatentImage 32x32 gives the right latent.
- CLIP: ComfyUI's own CLIPTextModel with the tiny open_clip text tower copied in (ComfyUI's SD2
  open_clip converter) and an SD1-style tokenizer with the world's context length and zero
  padding: cond = the world CLIP's per-token states, pooled_output = its final-layer-normed
  end-of-text state (what UnHype reads).
- VAE: ComfyUI's pixel-space VAE: decode = (x + 1) / 2 clamped to [0, 1], as the world samples.
"""

import os

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.utils
import torch
from torch import nn

from ..unhype.choices import PROVING_GROUND
from ..unhype.world import WEIGHTS_DIR, tiny_clip, tiny_unet


# -- MODEL --
class WorldLatentFormat(comfy.latent_formats.LatentFormat):
    """The 32x32 RGB image itself, in [-1, 1]: 3 channels, no downscaling, no scaling."""

    latent_channels = 3
    spacial_downscale_ratio = 1
    latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


class WorldModelConfig(comfy.supported_models_base.BASE):
    """Model config of the world UNet; `unhype_family` tells UnHype's trainer what it is."""

    unhype_family = PROVING_GROUND  # its entry in unhype/families.py
    unet_config = {}
    unet_extra_config = {}
    # ModelSamplingDiscrete: "sqrt_linear" is torch.linspace(start, end), the DDPM linear betas
    # of tiny_unet.NoiseSchedule
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": 1e-4,
                         "linear_end": 0.02, "timesteps": tiny_unet.TRAIN_STEPS}
    latent_format = WorldLatentFormat
    supported_inference_dtypes = [torch.float32]
    memory_usage_factor = 0.1


class WorldUNet(tiny_unet.TinyUNet):
    """TinyUNet with the diffusion-model interface BaseModel calls: (x, timesteps, context, ...).

    ComfyUI passes the nearest integer timestep of each sigma (as a float); the eps conversion
    uses that timestep's alpha, as the world does. Extra keyword conds (e.g. UnHype's embedding,
    read by the APPLY_MODEL wrapper) are ignored.
    """

    def __init__(self, dtype=None, device=None, operations=None):
        super().__init__()
        self.dtype = dtype or torch.float32
        self.to(device=device, dtype=self.dtype)

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None,
                **kwargs):
        t = timesteps.round().long().clamp(0, tiny_unet.TRAIN_STEPS - 1)
        return super().forward(x, t, context)


def build_model(weights_dir: str = WEIGHTS_DIR) -> comfy.model_patcher.ModelPatcher:
    config = WorldModelConfig({})
    config.set_inference_dtype(torch.float32, None)
    base = comfy.model_base.BaseModel(config, device=torch.device("cpu"), unet_model=WorldUNet)
    path = os.path.join(weights_dir, tiny_unet.WEIGHTS_FILE)
    state = comfy.utils.load_torch_file(path, safe_load=True)
    base.diffusion_model.load_state_dict({k: v.float() for k, v in state.items()})
    return comfy.model_patcher.ModelPatcher(
        base, load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device())


# -- CLIP --
_START, _END = 49406, 49407  # CLIP BPE start / end-of-text ids (open_clip and ComfyUI alike)


class WorldTokenizer(comfy.sd1_clip.SDTokenizer):
    """ComfyUI's CLIP tokenizer (same BPE as open_clip) at the world's context length, padded
    with 0 like open_clip, so every token state matches the world's."""

    def __init__(self, embedding_directory=None, tokenizer_data=None):
        super().__init__(max_length=tiny_clip.CONTEXT_LENGTH, pad_with_end=False,
                         embedding_directory=embedding_directory,
                         embedding_size=tiny_clip.TEXT_WIDTH, tokenizer_data=tokenizer_data or {})


class WorldTokenizers(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data=None):
        super().__init__(embedding_directory=embedding_directory,
                         tokenizer_data=tokenizer_data or {}, tokenizer=WorldTokenizer)


class WorldTextEncoder(comfy.sd1_clip.SDClipModel):
    """CLIPTextModel sized like the tiny CLIP; pooled = unprojected end-of-text state."""

    def __init__(self, device="cpu", dtype=None, model_options=None, textmodel_json_config=None):
        super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                         max_length=tiny_clip.CONTEXT_LENGTH,
                         textmodel_json_config=dict(textmodel_json_config),
                         special_tokens={"start": _START, "end": _END, "pad": 0},
                         return_projected_pooled=False)


class WorldClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options=None, textmodel_json_config=None):
        super().__init__(device=device, dtype=dtype, model_options=model_options or {},
                         clip_model=WorldTextEncoder,
                         textmodel_json_config=textmodel_json_config)


def _activation(module: nn.Module) -> str:
    for sub in module.modules():
        if isinstance(sub, nn.GELU):
            return "gelu"
        if type(sub).__name__ == "QuickGELU":
            return "quick_gelu"
    raise ValueError(f"unknown activation in the world CLIP's MLP: {module}")


def _text_config(model) -> dict:
    """ComfyUI CLIPTextModel config of the open_clip text tower, read from the model itself."""
    block = model.transformer.resblocks[0]
    return {"num_hidden_layers": len(model.transformer.resblocks),
            "hidden_size": model.ln_final.normalized_shape[0],
            "num_attention_heads": block.attn.num_heads,
            "intermediate_size": block.mlp.c_fc.out_features,
            "hidden_act": _activation(block.mlp),
            "max_position_embeddings": model.positional_embedding.shape[0],
            "eos_token_id": _END}


def build_clip(weights_dir: str = WEIGHTS_DIR) -> comfy.sd.CLIP:
    world = tiny_clip.load_tiny_clip(os.path.join(weights_dir, tiny_clip.WEIGHTS_FILE)).model
    text_keys = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
                 "text_projection")
    state = {k: v.detach().clone() for k, v in world.state_dict().items()
             if k.startswith(text_keys)}
    state = comfy.utils.clip_text_transformers_convert(state, "", "")
    target = comfy.supported_models_base.ClipTarget(WorldTokenizers, WorldClipModel)
    target.params = {"textmodel_json_config": _text_config(world)}
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    missing, unexpected = clip.load_sd(state)
    missing = [k for k in missing if k != "logit_scale"]
    if missing or unexpected:
        raise ValueError(f"world CLIP weights do not fit ComfyUI's CLIPTextModel: "
                                 f"missing {missing}, unexpected {unexpected}")
    return clip


# -- VAE --
def build_vae() -> comfy.sd.VAE:
    return comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
