"""UnHype Proving Ground: the CPU-sized world of `unhype/world/` as a ComfyUI MODEL, CLIP and VAE.

The world's tiny models know eight colours and five shapes, so the whole ComfyUI path (UnHype
Trainer, UnHype Conditioner, Apply Dynamic LoRA, KSampler, VAE Decode) can be run and judged on
a model where erasure is visible, in minutes on a CPU. The objects are built in comfy_world.py.
"""

import importlib
import inspect

import comfy.sample
from comfy_api.latest import io

# The oldest ComfyUI tested (requires-comfyui); it has both pieces _check_host looks for.
from ..unhype.discovery import FLOOR_VERSION
from .schema import CATEGORY


class ProvingGroundError(RuntimeError):
    """This ComfyUI lacks something the proving ground needs."""


def _check_host() -> None:
    """Pixel-space VAEs and spatial-ratio-aware empty latents are newer ComfyUI pieces."""
    missing = []
    try:
        importlib.import_module("comfy.pixel_space_convert")
    except ImportError:
        missing.append("pixel-space VAEs (comfy.pixel_space_convert)")
    params = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    if "downscale_ratio_spacial" not in params:
        missing.append("empty latents that follow the model's downscale ratio "
                       "(comfy.sample.fix_empty_latent_channels(downscale_ratio_spacial))")
    if missing:
        raise ProvingGroundError(
            f"UnHype Proving Ground needs ComfyUI {FLOOR_VERSION} or newer; this one lacks "
            f"{' and '.join(missing)}. Update ComfyUI.")


class UnHypeProvingGround(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeProvingGround",
            display_name="UnHype Proving Ground",
            category=CATEGORY,
            description=(
                "The proving ground: a tiny text-to-image world (32x32 images of one coloured "
                "shape, 8 colours x 5 shapes) as a MODEL, CLIP and VAE, built from weights that "
                "ship with UnHype. Train an UnHype network on it (erase a colour) and see the "
                "result in minutes on a CPU. Use EmptyLatentImage at 32x32."),
            search_aliases=["concept erasure", "toy model", "tiny model", "CPU demo",
                            "test model"],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The world's tiny UNet (eps "
                                "prediction, 1000-step linear DDPM schedule)."),
                io.Clip.Output(display_name="clip", tooltip="The world's tiny CLIP (context "
                               "length 16, 128-d pooled output)."),
                io.Vae.Output(display_name="vae", tooltip="Pixel-space VAE: the latent is the "
                              "32x32 image in [-1, 1]."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        _check_host()
        from . import comfy_world  # imports open_clip: only when the node runs

        return io.NodeOutput(comfy_world.build_model(), comfy_world.build_clip(),
                             comfy_world.build_vae())
