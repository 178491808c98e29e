"""Deterministic training of the proving-ground world (single CPU thread).

    python -m unhype.world.train_world clip --out unhype/world/weights --seed 0 --steps 1200
    python -m unhype.world.train_world unet --out unhype/world/weights --seed 0 --steps 3000
    python -m unhype.world.train_world eval --out unhype/world/weights --seed 0 --samples 200

The UNet run loads the frozen CLIP from --out, so run `clip` first. `eval` reports the CLIP's
zero-shot accuracy on held-out real renders and the judged colour/shape of DDIM samples.
"""

import argparse
import copy
import math
import os
import time

import torch
import torch.nn.functional as F

from . import load_world, tiny_clip, tiny_unet
from .data import make_dataset, to_float
from .identities import (
    IDENTITIES,
    IDENTITY_OF,
    NAME_TEMPLATES,
    identity_vocabulary_texts,
    make_identity_dataset,
)
from .judge import Judge
from .tiny_clip import TinyClip, load_tiny_clip, save_tiny_clip, soft_contrastive_loss
from .tiny_unet import TRAIN_STEPS, NoiseSchedule, TinyUNet, load_tiny_unet, save_tiny_unet
from .vocabulary import COLOURS, SHAPES, TEMPLATES

TRAIN_IMAGES = 40_000
HELD_OUT_IMAGES = 2_000
HELD_OUT_SEED_OFFSET = 1_000
SAMPLE_BATCH = 50
PROMPT_DROPOUT = 0.1
UNET_SAVE_EVERY = 250


def _cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _log(message: str) -> None:
    print(message, flush=True)


def evaluate_clip(clip: TinyClip, seed: int) -> tuple[float, float]:
    """Zero-shot (colour, shape) accuracy on held-out real renders."""
    held_out = make_dataset(HELD_OUT_IMAGES, seed + HELD_OUT_SEED_OFFSET)
    judge = Judge(clip)
    images = to_float(held_out.images)
    colour = (judge.clip_colour(images) == held_out.colour).float().mean().item()
    shape = (judge.clip_shape(images) == held_out.shape).float().mean().item()
    return colour, shape


def evaluate_clip_names(clip: TinyClip, seed: int) -> tuple[float, float]:
    """Zero-shot 40-way identity accuracy on held-out real renders, by name and by alias."""
    held_out = make_dataset(HELD_OUT_IMAGES, seed + HELD_OUT_SEED_OFFSET)
    truth = torch.tensor([IDENTITY_OF[c, s] for c, s in
                          zip(held_out.colour.tolist(), held_out.shape.tolist(), strict=True)])
    with torch.no_grad():
        images = clip.encode_image(to_float(held_out.images))
        accuracy = []
        for word in ("name", "alias"):
            texts = clip.encode_text([NAME_TEMPLATES[0].format(name=getattr(i, word))
                                      for i in IDENTITIES])
            accuracy.append(((images @ texts.T).argmax(-1) == truth).float().mean().item())
    return accuracy[0], accuracy[1]


def _dataset(identities: bool, seed: int):
    return (make_identity_dataset if identities else make_dataset)(TRAIN_IMAGES, seed)


def train_clip(out: str, seed: int, steps: int, batch: int = 128, lr: float = 1e-3,
               init: str | None = None, identities: bool = False) -> None:
    """Contrastive training from scratch, or (`init`: a weights folder) a fine-tune of the text
    tower alone: the image tower, and with it every judge's view of images, stays as it was."""
    torch.manual_seed(seed)
    data = _dataset(identities, seed)
    if init:
        clip = load_tiny_clip(os.path.join(init, tiny_clip.WEIGHTS_FILE)).train()
        for name, parameter in clip.model.named_parameters():
            parameter.requires_grad_(not name.startswith("visual."))
    else:
        clip = TinyClip()
    trainable = [(n, p) for n, p in clip.model.named_parameters() if p.requires_grad]
    # No weight decay on the token embedding: unused rows must stay at their seeded init.
    decayed = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in trainable if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}], lr=lr
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr, warmup=100)
        idx = torch.randint(len(data.captions), (batch,), generator=generator)
        captions = [data.captions[i] for i in idx]
        colour_ok = (data.caption_colour[idx][None, :] < 0) | (
            data.caption_colour[idx][None, :] == data.colour[idx][:, None]
        )
        shape_ok = (data.caption_shape[idx][None, :] < 0) | (
            data.caption_shape[idx][None, :] == data.shape[idx][:, None]
        )
        loss = soft_contrastive_loss(
            clip.encode_image(to_float(data.images[idx])),
            clip.encode_text(captions),
            colour_ok & shape_ok,
            clip.model.logit_scale,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            _log(f"clip step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
    seconds = time.time() - start
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, tiny_clip.WEIGHTS_FILE)
    save_tiny_clip(clip, path, identity_vocabulary_texts() if identities else ())
    colour, shape = evaluate_clip(load_tiny_clip(path), seed)
    _log(f"clip done: {seconds:.0f}s, held-out zero-shot colour {colour:.3f} shape {shape:.3f}")
    if identities:
        name, alias = evaluate_clip_names(load_tiny_clip(path), seed)
        _log(f"held-out zero-shot identity by name {name:.3f}, by alias {alias:.3f}")


def train_unet(
    out: str, seed: int, steps: int, batch: int = 64, lr: float = 1e-3, ema_decay: float = 0.998,
    init: str | None = None, identities: bool = False,
) -> None:
    """DDPM (velocity loss, eps output) on the frozen CLIP states; 10% empty prompts for CFG.
    `init`: fine-tune the UNet of that weights folder instead of starting from scratch."""
    torch.manual_seed(seed)
    clip = load_tiny_clip(os.path.join(out, tiny_clip.WEIGHTS_FILE))
    data = _dataset(identities, seed)
    unique_captions = sorted(set(data.captions)) + [""]
    with torch.no_grad():
        caption_states = torch.cat(
            [
                clip.text_states(unique_captions[i : i + 512])[0]
                for i in range(0, len(unique_captions), 512)
            ]
        )
    index_of = {caption: i for i, caption in enumerate(unique_captions)}
    caption_index = torch.tensor([index_of[c] for c in data.captions])
    empty_index = len(unique_captions) - 1
    if init:
        unet = load_tiny_unet(os.path.join(init, tiny_unet.WEIGHTS_FILE)).requires_grad_(True)
        unet.train()
    else:
        unet = TinyUNet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    schedule = NoiseSchedule()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, steps, lr, warmup=100)
        idx = torch.randint(len(data.captions), (batch,), generator=generator)
        drop = torch.rand(batch, generator=generator) < PROMPT_DROPOUT
        context = caption_states[torch.where(drop, empty_index, caption_index[idx])]
        x0 = to_float(data.images[idx]) * 2 - 1
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(TRAIN_STEPS, (batch,), generator=generator)
        a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        velocity = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = F.mse_loss(unet.velocity(schedule.add_noise(x0, noise, t), t, context), velocity)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        # EMA warm-up: a plain EMA keeps a share of the zero-initialised output layers for
        # thousands of steps, which shrinks every eps prediction and leaves noise in samples.
        decay = ema_decay if init else min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        if step % 100 == 0 or step == steps - 1:
            _log(f"unet step {step} loss {loss.item():.4f} {time.time() - start:.0f}s")
        if (step + 1) % UNET_SAVE_EVERY == 0 or step == steps - 1:
            # Rewritten as training goes, so a run cut short still leaves usable weights.
            save_tiny_unet(ema, os.path.join(out, tiny_unet.WEIGHTS_FILE))
    _log(f"unet done: {time.time() - start:.0f}s")


def _judged_samples(world, prompts: list[str], colours, shapes, seed: int) -> dict[str, float]:
    """erasure.judge_accuracy of DDIM samples of the prompts, plus seconds per sample."""
    from .erasure import judge_accuracy

    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    images = torch.cat(
        [
            world.denoiser.sample(prompts[i : i + SAMPLE_BATCH], generator)
            for i in range(0, len(prompts), SAMPLE_BATCH)
        ]
    )
    seconds = (time.time() - start) / len(prompts)
    return {"seconds": seconds,
            **judge_accuracy(world, images, colours.tolist(), shapes.tolist())}


def evaluate_samples(out: str, seed: int, samples: int, identities: bool = False) -> None:
    """Judge DDIM-25 / CFG-4 samples of "a photo of a {colour} {shape}", classes balanced;
    `identities`: also "a photo of {name}" and "a photo of {alias}" for every identity."""
    world = load_world(weights_dir=out)
    colour, shape = evaluate_clip(world.clip, seed)
    _log(f"clip held-out zero-shot colour {colour:.3f} shape {shape:.3f}")
    colours = torch.arange(samples) % len(COLOURS)
    shapes = (torch.arange(samples) // len(COLOURS)) % len(SHAPES)
    prompts = [
        TEMPLATES[0].format(colour=COLOURS[c].word, shape=SHAPES[s].word)
        for c, s in zip(colours, shapes, strict=True)
    ]
    result = _judged_samples(world, prompts, colours, shapes, seed)
    _log(
        f"{samples} samples, {result['seconds']:.3f}s each: colour pixel judge "
        f"{result['pixel']:.3f}, CLIP judge {result['clip']:.3f}; shape CLIP judge "
        f"{result['shape']:.3f}; both {result['identity']:.3f}"
    )
    if not identities:
        return
    who = [IDENTITIES[k % len(IDENTITIES)] for k in range(samples)]
    colours, shapes = torch.tensor([i.colour for i in who]), torch.tensor([i.shape for i in who])
    for word in ("name", "alias"):
        prompts = [NAME_TEMPLATES[0].format(name=getattr(i, word)) for i in who]
        result = _judged_samples(world, prompts, colours, shapes, seed)
        _log(
            f"{samples} samples by {word}: identity (CLIP colour and shape) "
            f"{result['identity']:.3f}; colour pixel {result['pixel']:.3f}, "
            f"CLIP {result['clip']:.3f}; shape {result['shape']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["clip", "unet", "eval"])
    parser.add_argument("--out", default="world-weights",
                        help="folder of the weights (default: world-weights; 'unet' and 'eval' "
                             "read the CLIP there, 'eval' the UNet too)")
    parser.add_argument("--init", default=None,
                        help="fine-tune the model in this weights folder (CLIP: its text tower "
                             "alone) instead of training from scratch")
    parser.add_argument("--identities", action="store_true",
                        help="the identities world: captions also name identities "
                             "(unhype/world/identities.py); 'eval' also judges names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps; 0: the recipe's (clip 1200, unet 3000; "
                             "fine-tunes: clip 600, unet 1500)")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    if args.steps < 0 or args.samples < 1:
        parser.error("--steps must be >= 0 and --samples >= 1")
    recipe = {"clip": 600, "unet": 1500} if args.init else {"clip": 1200, "unet": 3000}
    args.steps = args.steps or recipe.get(args.command, 0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    if args.command == "clip":
        lr = 3e-4 if args.init else 1e-3
        train_clip(args.out, args.seed, args.steps, lr=lr, init=args.init,
                   identities=args.identities)
    elif args.command == "unet":
        lr = 5e-4 if args.init else 1e-3
        train_unet(args.out, args.seed, args.steps, lr=lr, init=args.init,
                   identities=args.identities)
    else:
        evaluate_samples(args.out, args.seed, args.samples, args.identities)


if __name__ == "__main__":
    main()
