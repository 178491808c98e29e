"""The CPU proving ground: a tiny text-to-image world where concept erasure is measurable.

32x32 images of one coloured shape (`data`), a tiny open_clip CLIP (`tiny_clip`), a tiny
pixel-space DDPM UNet with SD-style attention names (`tiny_unet`), judges (`judge`) and the
`Denoiser` adapter the UnHype trainer drives (`denoiser`). `load_world()` loads the committed
weights in `weights/` (safetensors, fp16 storage, fp32 compute).

How the weights were made (one torch thread each, on a 2-core machine shared with other jobs;
both runs are bit-for-bit deterministic for a given seed):
    python -m unhype.world.train_world clip --out unhype/world/weights --seed 0 --steps 1200
        1,022 s wall (9.5 min CPU); zero-shot on 2,000 held-out real renders: colour 100.0%,
        shape 99.8%.
    python -m unhype.world.train_world unet --out unhype/world/weights --seed 0 --steps 3000
        1,832 s wall (24 min CPU), batch 64, AdamW 1e-3 cosine, EMA 0.998 with warm-up.
    python -m unhype.world.train_world eval --out unhype/world/weights --seed 0 --samples 200
        200 samples of "a photo of a {colour} {shape}" (DDIM 25, CFG 4): prompted colour 100%
        (pixel judge) / 100% (CLIP judge), prompted shape 88.5% (CLIP judge); 0.12 s a sample.
        Synonym and paraphrase prompts (160 each): colour 100% / 100%, shape 86%.

The identities world (`identities`: 40 named identities, the paper's celebrity protocol) is this
world fine-tuned, in `weights-identities/` (same machine, a helper's tests on the other core):
    python -m unhype.world.train_world clip --identities --init unhype/world/weights \
        --out unhype/world/weights-identities --steps 600
        218 s wall, text tower only; held-out zero-shot colour 100%, shape 99.8%, identity by
        name 99.8%, by alias 99.8% (40-way).
    python -m unhype.world.train_world unet --identities --init unhype/world/weights \
        --out unhype/world/weights-identities --steps 1500
        1,090 s wall, lr 5e-4, EMA 0.998 from the loaded weights.
    python -m unhype.world.train_world eval --identities --out unhype/world/weights-identities
        200 samples each: "a photo of a {colour} {shape}" colour 100% (both judges), shape 94%;
        "a photo of {name}" recognised (CLIP colour and shape) 92%, colour 100%; by alias 93%.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models load torch: imported when a world is loaded
    import torch

    from .denoiser import WorldDenoiser
    from .judge import Judge
    from .tiny_clip import TinyClip
    from .tiny_unet import TinyUNet

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")


@dataclass
class World:
    clip: TinyClip
    unet: TinyUNet
    denoiser: WorldDenoiser
    judge: Judge


def load_world(device: str | torch.device = "cpu", weights_dir: str = WEIGHTS_DIR) -> World:
    """Frozen world from `weights_dir` (eval mode, requires_grad off everywhere)."""
    from . import tiny_clip, tiny_unet
    from .denoiser import WorldDenoiser
    from .judge import Judge

    clip = tiny_clip.load_tiny_clip(os.path.join(weights_dir, tiny_clip.WEIGHTS_FILE), device)
    unet = tiny_unet.load_tiny_unet(os.path.join(weights_dir, tiny_unet.WEIGHTS_FILE), device)
    return World(clip=clip, unet=unet, denoiser=WorldDenoiser(unet, clip), judge=Judge(clip))
