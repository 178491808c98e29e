"""Which Linear layers of a diffusion model get a dynamic LoRA, by ComfyUI module name.

A target names a Linear relative to the diffusion model (ComfyUI's `model.diffusion_model`) and,
for fused projections such as Flux's `qkv`, the slice of its output the LoRA may touch.
Target presets are name patterns, so one covers every size of a family (SD1 and SD2 share one).
"Target preset" always names one of these layer sets; a bare "preset" is the Trainer's training
preset (unhype/settings.py).
"""

import re
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Target:
    name: str
    in_features: int
    out_features: int
    out_slice: tuple[int, int] | None = None

    @property
    def delta_features(self) -> int:
        """Width of the LoRA output: the slice when there is one, else the whole output."""
        if self.out_slice is None:
            return self.out_features
        return self.out_slice[1] - self.out_slice[0]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "out_slice": list(self.out_slice) if self.out_slice else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Target":
        out_slice = data.get("out_slice")
        target = cls(
            name=str(data["name"]),
            in_features=int(data["in_features"]),
            out_features=int(data["out_features"]),
            out_slice=(int(out_slice[0]), int(out_slice[1])) if out_slice else None,
        )
        if target.out_slice and not 0 <= target.out_slice[0] < target.out_slice[1] <= (
            target.out_features
        ):
            raise ValueError(
                f"target {target.name}: slice {target.out_slice} is outside its output"
            )
        return target


def _whole(linear: nn.Module) -> tuple[int, int] | None:
    return None


def _value_third(linear: nn.Module) -> tuple[int, int]:
    """The v part of a fused q,k,v projection: the last of three equal thirds."""
    width = linear.out_features // 3
    return (2 * width, 3 * width)


def _key_value_thirds(linear: nn.Module) -> tuple[int, int]:
    """The k and v parts of a fused q,k,v projection: the last two of three equal thirds."""
    width = linear.out_features // 3
    return (width, 3 * width)


def _value_of_fused_single(linear: nn.Module) -> tuple[int, int]:
    """Flux single blocks fuse q,k,v and the MLP input in `linear1`: v is the third hidden slice."""
    width = linear.in_features
    return (2 * width, 3 * width)


@dataclass(frozen=True)
class TargetPreset:
    description: str
    rules: tuple[tuple[str, object], ...]


_CROSS_KV = ((r"(^|\.)attn2\.to_[kv]$", _whole),)
TARGET_PRESETS: dict[str, TargetPreset] = {
    "sd-cross-kv": TargetPreset(
        "SD1.x/SD2 cross-attention key and value (the paper's choice)", _CROSS_KV
    ),
    "sd-cross-v": TargetPreset(
        "SD1.x/SD2/SDXL cross-attention value only: the attention maps, and so the layout, stay "
        "the base model's", ((r"(^|\.)attn2\.to_v$", _whole),)
    ),
    "sd-all-attn": TargetPreset(
        "SD1.x/SD2 every attention projection (q, k, v, out) in self- and cross-attention",
        ((r"(^|\.)attn[12]\.to_(q|k|v|out\.0)$", _whole),),
    ),
    "sdxl-cross-kv": TargetPreset("SDXL cross-attention key and value", _CROSS_KV),
    "wan-cross-kv": TargetPreset(
        "Wan cross-attention key and value: in text-to-video they read only the text (umT5 "
        "through the model's text embedding), so the LoRA depends on the prompt alone",
        ((r"^blocks\.\d+\.cross_attn\.[kv]$", _whole),),
    ),
    "flux-value-out": TargetPreset(
        "Flux value projections (v slice of fused qkv / linear1) and image attention output",
        (
            (r"^double_blocks\.\d+\.(img|txt)_attn\.qkv$", _value_third),
            (r"^double_blocks\.\d+\.img_attn\.proj$", _whole),
            (r"^single_blocks\.\d+\.linear1$", _value_of_fused_single),
        ),
    ),
    "flux2-text": TargetPreset(
        "Flux.2 text path: the text input projection txt_in (reads the prompt alone) and the "
        "k and v slices of the text stream's fused txt_attn.qkv in the double blocks (the "
        "text tokens, modulated by the timestep; after the first block they have attended to "
        "the image); no image-stream or single-block layer",
        (
            (r"^txt_in$", _whole),
            (r"^double_blocks\.\d+\.txt_attn\.qkv$", _key_value_thirds),
        ),
    ),
    "qwenimage-text": TargetPreset(
        "Qwen-Image text path: the text input projection txt_in (reads the prompt alone, "
        "after the model's own txt_norm) and the text stream's add_k_proj and add_v_proj in "
        "every transformer block (the text tokens, modulated by the timestep; after the first "
        "block they have attended to the image); no image-stream layer",
        (
            (r"^txt_in$", _whole),
            (r"^transformer_blocks\.\d+\.attn\.add_[kv]_proj$", _whole),
        ),
    ),
    "zimage-text": TargetPreset(
        "Z-Image text path: the caption embedder's projection cap_embedder.1 (after its "
        "RMSNorm) and every linear of the context refiner (attention qkv and out, feed-forward "
        "w1, w2, w3), which runs on the caption tokens alone without the timestep: the LoRA "
        "depends on the prompt only, the same at every step; the shared single-stream layers, "
        "caption rows included, are left alone",
        (
            (r"^cap_embedder\.1$", _whole),
            (r"^context_refiner\.\d+\.(attention\.(qkv|out)|feed_forward\.w[123])$", _whole),
        ),
    ),
}


def _is_linear(module: nn.Module) -> bool:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def targets_from_preset(model: nn.Module, target_preset: str) -> list[Target]:
    """Every Linear of `model` the target preset selects, in module order, with its shape."""
    if target_preset not in TARGET_PRESETS:
        raise ValueError(f"unknown target preset {target_preset!r}; choose one of "
                         f"{sorted(TARGET_PRESETS)}")
    chosen = TARGET_PRESETS[target_preset]
    targets = []
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        for pattern, slicer in chosen.rules:
            if re.search(pattern, name):
                targets.append(
                    Target(name, module.in_features, module.out_features, slicer(module))
                )
                break
    if not targets:
        raise ValueError(
            f"target preset {target_preset!r} ({chosen.description}) matches no Linear layer of "
            f"this {type(model).__name__}: is it the right model family?"
        )
    return targets


class TargetMismatchError(ValueError):
    """The model lacks some targets or has them with other shapes."""


def resolve_targets(model: nn.Module, targets: list[Target]) -> dict[str, nn.Module]:
    """Map each target to its module; check all of them, then fail once listing every problem."""
    modules, problems = {}, []
    for target in targets:
        try:
            module = model.get_submodule(target.name)
        except AttributeError:
            problems.append(f"missing: {target.name}")
            continue
        if not _is_linear(module):
            problems.append(f"not a Linear: {target.name} is a {type(module).__name__}")
            continue
        found = (module.in_features, module.out_features)
        if found != (target.in_features, target.out_features):
            problems.append(
                f"shape: {target.name} is {found[0]}->{found[1]}, "
                f"the network expects {target.in_features}->{target.out_features}"
            )
            continue
        modules[target.name] = module
    if problems:
        shown = problems[:12]
        if len(problems) > 12:
            shown.append(f"... and {len(problems) - 12} more")
        raise TargetMismatchError(
            f"{len(problems)} of {len(targets)} UnHype targets do not fit this "
            f"{type(model).__name__}:\n  " + "\n  ".join(shown)
        )
    return modules
