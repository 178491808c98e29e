"""The model families UnHype works on: every fact about a family in its one `Family` entry.

A family is what a network file names in `unhype.base_arch`. Its entry says how ComfyUI calls
its model config, how UnHype trains on it (resolution, CFG or guidance, target preset, training
defaults), what its prompt embedding is, and what a network made for it declares (ModelSpec
architecture, licence). Adding a family is one entry here plus its target preset in
unhype/targets.py.

`resolve` is the one place where a setting left at 0 (or "auto") becomes the family's value.
Imports nothing, so the command line and the settings can read it without torch or ComfyUI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .choices import PROVING_GROUND

#: settings whose unset value (0, "auto") is the family's and nobody else's
RUN_VALUES = ("target_preset", "resolution", "guidance", "trigger")


@dataclass(frozen=True)
class Family:
    name: str  # the key, and the network file's unhype.base_arch
    label: str  # how messages name it
    #: comfy.supported_models classes of its checkpoints (their subclasses too, unless
    #: `comfy_subclasses` is False); empty for a model that names its family itself
    #: (`unhype_family` on its config, the proving ground)
    comfy_configs: tuple[str, ...]
    target_preset: str  # the layers a network gets by default (unhype/targets.py)
    resolution: int  # training resolution in pixels
    #: guidance-distilled: ESD samples without an uncond pass, the guidance rides in the cond
    distilled: bool
    guidance: float  # CFG of the ESD sampling (distilled: the guidance value)
    #: is the cond tensor CLIP output laid out in chunks (so each chunk is a part of a prompt)?
    chunked_clip_cond: bool
    #: the text encoder whose pooled vector UnHype reads (a family without one: the encoder
    #: whose conditioning rows a "cond-pooled" trigger pools, and their width)
    pooled_encoder: str
    pooled_width: int
    pooled_projected: bool  # text_projection applied (else the final-layer-normed EOT state)
    modelspec_architecture: str
    licence: str  # a network is trained on the base model's predictions: it carries its terms
    #: training values that differ from the presets' (unhype/settings.py), e.g. Flux's rates
    training_defaults: Mapping[str, object] = field(default_factory=dict)
    latent_patch: int = 1  # the model patchifies the latent in squares of this side
    #: what a network reads of a prompt by default (unhype/trigger.py): the CLIP pooled vector
    #: where the family has one, else "cond-pooled"
    trigger: str = "clip-pooled"
    #: ComfyUI's conditioning carries a CLIP pooled vector (`pooled_output`); without one only
    #: "cond-pooled" networks can run on the family
    clip_pooled: bool = True
    trains: bool = True  # the Trainer is built for it (else inference and bake only)
    #: do subclasses of `comfy_configs` belong to the family? Wan's are image-, audio-, pose- or
    #: camera-conditioned variants, whose extra inputs UnHype knows nothing of
    comfy_subclasses: bool = True
    #: targets (a pattern of their names) that read the prompt through a layer of the model's
    #: own (Wan's text embedding, Qwen-Image's txt_norm before txt_in): fixed for the prompt,
    #: but the bake does not run that layer, so it does not bake their norm cap (unhype/bake.py)
    embedded_prompt_targets: str = ""

    def __post_init__(self):
        object.__setattr__(self, "training_defaults",
                           MappingProxyType(dict(self.training_defaults)))

    @property
    def embedding_source(self) -> str:
        """What a network made for this family reads by default, as its file records it."""
        if not self.clip_pooled:
            return self.trigger_source("cond-pooled", 2 * self.pooled_width)
        form = "projected" if self.pooled_projected else "final-layer-normed end-of-text state"
        return f"{self.pooled_encoder} pooled ({form})"

    def trigger_source(self, trigger: str, width: int) -> str:
        """`embedding_source` of a network with this trigger of this width (a tiny test CLIP
        has a width of its own)."""
        if trigger == "cond-pooled":
            return f"cond-pooled: mean and max of the text conditioning's {width // 2}-d rows"
        if width == self.pooled_width:
            return self.embedding_source
        return f"pooled CLIP embedding ({width}-d)"

    def defaults(self) -> dict:
        """What a run on this family uses for each setting it leaves unset."""
        return {**{name: getattr(self, name) for name in RUN_VALUES}, **self.training_defaults}


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="sd1", label="SD1.x", comfy_configs=("SD15",), target_preset="sd-cross-kv",
           resolution=512, distilled=False, guidance=7.5, chunked_clip_cond=True,
           pooled_encoder="CLIP-L", pooled_width=768, pooled_projected=False,
           modelspec_architecture="stable-diffusion-v1", licence="CreativeML Open RAIL-M"),
    Family(name="sd2", label="SD2.x", comfy_configs=("SD20",), target_preset="sd-cross-kv",
           resolution=768, distilled=False, guidance=7.5, chunked_clip_cond=True,
           pooled_encoder="OpenCLIP-H", pooled_width=1024, pooled_projected=True,
           modelspec_architecture="stable-diffusion-v2", licence="CreativeML Open RAIL++-M"),
    Family(name="sdxl", label="SDXL", comfy_configs=("SDXL",), target_preset="sdxl-cross-kv",
           resolution=1024, distilled=False, guidance=7.5, chunked_clip_cond=True,
           pooled_encoder="CLIP-G", pooled_width=1280, pooled_projected=True,
           modelspec_architecture="stable-diffusion-xl-v1-base",
           licence="CreativeML Open RAIL++-M"),
    Family(name="flux", label="Flux.1", comfy_configs=("Flux",), target_preset="flux-value-out",
           resolution=512, distilled=True, guidance=3.5, chunked_clip_cond=False,
           pooled_encoder="CLIP-L", pooled_width=768, pooled_projected=False,
           modelspec_architecture="flux-1-dev", licence="FLUX.1 [dev] Non-Commercial License",
           # the authors' Flux nudity run (PAPER.md)
           training_defaults={"rank": 4, "hidden": 100, "alpha0": 0.5, "lr_gamma": 0.5,
                              "learning_rate": 1e-5, "retain_learning_rate": 2e-5,
                              "removal_step": 1e-3, "removal_weight": 2.0, "retain_weight": 1.0},
           latent_patch=2),
    # one ComfyUI class for Klein 4B, Klein 9B and Flux.2 dev (docs/families.md, Flux.2 Klein);
    # the values are distilled Klein's: 4 steps at CFG 1, no guidance embedding (guidance is unused)
    Family(name="flux2", label="Flux.2 Klein", comfy_configs=("Flux2",),
           target_preset="flux2-text", resolution=1024, distilled=True, guidance=1.0,
           chunked_clip_cond=False, pooled_encoder="Qwen3 (layers 9, 18, 27 stacked)",
           # its cond width on Klein 4B (3 x 2560); 9B's is 12288: a network records its own
           pooled_width=7680, pooled_projected=False, modelspec_architecture="flux-2-klein",
           # the stricter of the two: Klein 4B is Apache-2.0
           licence="FLUX Non-Commercial License (Klein 9B; Klein 4B: Apache-2.0)",
           trigger="cond-pooled", clip_pooled=False),
    # the CPU world of unhype/world/ (nodes/proving_ground.py): SD layer names, 32x32 pixels, its
    # own tiny CLIP; MIT: the world ships with this pack
    Family(name=PROVING_GROUND, label="proving ground", comfy_configs=(),
           target_preset="sd-cross-kv", resolution=32, distilled=False, guidance=7.5,
           chunked_clip_cond=False, pooled_encoder="proving-ground tiny CLIP", pooled_width=128,
           pooled_projected=False, modelspec_architecture="unhype-proving-ground", licence="MIT",
           # a 2M-parameter UNet learns in hundreds of steps, not thousands; eta 1.5 fitted
           # for 2000 steps erases and keeps the shape, eta 3 for 1000 loses it (docs/results.md,
           # proving ground: keeping the rest)
           training_defaults={"rank": 4, "hidden": 128, "trajectory_length": 50, "steps": 2000,
                              "learning_rate": 1e-3, "retain_learning_rate": 1e-3, "eta": 1.5,
                              "lr_every": 750, "draws_per_call": 32}),
    # T2V only: Wan 2.1 1.3B/14B and Wan 2.2 A14B (both experts) load as WAN21_T2V, the 2.2
    # TI2V-5B as WAN22_T2V; umT5 has no pooled vector. 480: the short side of 832x480; CFG 5
    # and patches of 2 as Wan's own T2V settings
    Family(name="wan", label="Wan 2.1/2.2 T2V", comfy_configs=("WAN21_T2V", "WAN22_T2V"),
           target_preset="wan-cross-kv", resolution=480, distilled=False, guidance=5.0,
           chunked_clip_cond=False, pooled_encoder="umT5-XXL", pooled_width=4096,
           pooled_projected=False, modelspec_architecture="wan-2.1-t2v", licence="Apache-2.0",
           latent_patch=2, trigger="cond-pooled", clip_pooled=False,
           comfy_subclasses=False, embedded_prompt_targets=r"(^|\.)cross_attn\.[kv]$"),
    # Qwen-Image, its 2512 release and its Edit models load as one ComfyUI class (an edit model
    # is told apart only by the reference latents its conditioning carries); Qwen2.5-VL-7B has
    # no pooled vector, and QwenImageTEModel strips its chat template before the DiT reads the
    # rows. 1328 and CFG 4: ComfyUI's own "Text to Image (Qwen-Image)" blueprint (1328x1328,
    # 20 steps, CFG 4; the model card's true_cfg_scale is 4 too); patches of 2 (process_img).
    # No subclass of it is Qwen-Image: Mage-Flow, derived from it, has a class of its own.
    Family(name="qwenimage", label="Qwen-Image", comfy_configs=("QwenImage",),
           target_preset="qwenimage-text", resolution=1328, distilled=False, guidance=4.0,
           chunked_clip_cond=False, pooled_encoder="Qwen2.5-VL-7B", pooled_width=3584,
           pooled_projected=False, modelspec_architecture="qwen-image", licence="Apache-2.0",
           latent_patch=2, trigger="cond-pooled", clip_pooled=False,
           comfy_subclasses=False, embedded_prompt_targets=r"^txt_in$"),
    # Z-Image Turbo and Base load as one ComfyUI class (ZImage, a Lumina2 NextDiT); Qwen3-4B
    # has no pooled vector, and ComfyUI keeps its chat template in the rows the DiT reads: a
    # network skips the template's "<|im_start|>user\n", the 3 rows every prompt shares
    # (measured, HyperNetConfig.trigger_skip). 1024, CFG 1: ComfyUI's own "Text to Image
    # (Z-Image-Turbo)" blueprint (1024x1024, AuraFlow shift 3, 8 steps of res_multistep at
    # CFG 1; Base's: 25 steps at CFG 4); patches of 2. Its one subclass, ZImagePixelSpace,
    # samples RGB patches through a pixel decoder of its own, untested: refused. The preset's
    # targets read the prompt through cap_embedder's RMSNorm (the refiner also through the
    # layers before it), which the bake does not run
    Family(name="zimage", label="Z-Image", comfy_configs=("ZImage",),
           target_preset="zimage-text", resolution=1024, distilled=True, guidance=1.0,
           chunked_clip_cond=False, pooled_encoder="Qwen3-4B", pooled_width=2560,
           pooled_projected=False, modelspec_architecture="z-image", licence="Apache-2.0",
           latent_patch=2, trigger="cond-pooled", clip_pooled=False,
           comfy_subclasses=False,
           embedded_prompt_targets=r"^(cap_embedder\.1|context_refiner\.\d+\..+)$"),
)}

class UnknownFamilyError(ValueError):
    """A family name that is not a key of FAMILIES."""


def family(name: str) -> Family:
    """The entry of a family, or an error naming the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(f"unknown model family {name!r}; UnHype knows "
                                 f"{', '.join(FAMILIES)}") from None


def checkpoint_labels(trains_only: bool = False) -> list[str]:
    """Labels of the families loaded from ComfyUI checkpoints (with `trains_only`, those the
    Trainer trains on), in table order."""
    return [f.label for f in FAMILIES.values()
            if f.comfy_configs and (f.trains or not trains_only)]


def pooled_name(width: int) -> str:
    """What a pooled vector of this width is, e.g. 'CLIP-L pooled embeddings (SD1.x / Flux.1)'
    (a family without one, such as Wan, is not named)."""
    same = [f for f in FAMILIES.values() if f.clip_pooled and f.pooled_width == width]
    if not same:
        return "pooled embeddings"
    return (f"{same[0].pooled_encoder} pooled embeddings "
            f"({' / '.join(f.label for f in same)})")


def per_family(attribute: str) -> str:
    """Each value of a numeric Family attribute with the families the Trainer trains that have
    it, for tooltips: per_family("resolution") == "512 SD1.x, Flux.1 / 768 SD2.x / ..."."""
    groups: dict[float, list[str]] = {}
    for entry in (f for f in FAMILIES.values() if f.trains):
        groups.setdefault(getattr(entry, attribute), []).append(entry.label)
    return " / ".join(f"{value:g} {', '.join(labels)}" for value, labels in groups.items())


def unset(value) -> bool:
    """0, None and "auto" leave a setting to its default."""
    return value is None or value == "auto" or (isinstance(value, int | float) and value == 0)


def resolve(name: str, given: Mapping[str, object],
            below: Mapping[str, object] = MappingProxyType({})) -> dict:
    """The values a run on family `name` uses: each of `given` that is set, else the family's
    (`Family.defaults`), else `below`'s (a training preset's, then the common values)."""
    values = {**below, **family(name).defaults()}
    values.update({key: value for key, value in given.items() if not unset(value)})
    return values
