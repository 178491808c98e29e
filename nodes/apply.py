"""Apply Dynamic LoRA: MODEL + UNHYPE -> MODEL whose every batch row gets its prompt's LoRA."""

import comfy.patcher_extension

from ..unhype import TargetMismatchError, resolve_targets
from .conditioner import PartsAtSampling
from .dynamic_lora import MODES, WRAPPER_KEY, DynamicLoRA, mark_positive


def describe_model(model) -> str:
    base = model.model
    config = getattr(base, "model_config", None)
    unet = getattr(config, "unet_config", {}) or {}
    shown = {k: unet[k] for k in ("context_dim", "model_channels", "hidden_size", "adm_in_channels",
                                  "context_in_dim", "depth") if k in unet}
    family = type(config).__name__ if config is not None else "unknown"
    return f"{type(base).__name__} ({family} {shown})"


class ApplyDynamicLoRA:
    DESCRIPTION = (
        "Makes the model apply, during sampling, the LoRA that the UnHype network generates from "
        "each prompt's embedding (attached by UnHype Conditioner / UnHype Text Encode). "
        "'conditional only' (SD1.x/SDXL with CFG): the negative runs the base model. "
        "'all rows': every prompt gets its LoRA (Flux and other guidance-distilled models)."
    )
    CATEGORY = "UnHype"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "unhype": ("UNHYPE",),
                "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                       "tooltip": "Multiplies every generated LoRA."}),
                "mode": (list(MODES), {"default": MODES[0]}),
            }
        }

    def apply(self, model, unhype, strength, mode):
        m = model.clone()
        try:
            resolve_targets(m.model.diffusion_model, unhype.targets)
        except TargetMismatchError as error:
            raise ValueError(
                f"Apply Dynamic LoRA: the UnHype network '{unhype.info.title}' was made for "
                f"{unhype.info.base_arch} (target preset {unhype.info.target_preset}), but the "
                f"model is {describe_model(m)}. {error}"
            ) from None
        wrappers = comfy.patcher_extension.WrappersMP
        m.add_wrapper_with_key(wrappers.APPLY_MODEL, WRAPPER_KEY,
                               DynamicLoRA(unhype, strength, mode))
        if mode == "conditional only" and not m.get_wrappers(wrappers.PREDICT_NOISE, WRAPPER_KEY):
            m.add_wrapper_with_key(wrappers.PREDICT_NOISE, WRAPPER_KEY, mark_positive)
        if not m.get_wrappers(wrappers.SAMPLER_SAMPLE, WRAPPER_KEY):
            m.add_wrapper_with_key(wrappers.SAMPLER_SAMPLE, WRAPPER_KEY, PartsAtSampling(unhype))
        return (m,)
