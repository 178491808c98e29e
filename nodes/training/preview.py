"""The preview a trained network is published with: a few of its erase and retain prompts,
sampled by the model itself without and with the network (Apply Dynamic LoRA's own patched
MODEL and UnHype Conditioner's reading), the same noise in both, drawn as one grid."""

import comfy.sample
import torch

from ...unhype.preview import render_grid
from ...unhype.prompts import fill
from ..sampling.patch import dynamic_lora_model
from ..sampling.reading import condition

PREVIEW_STEPS = 20
PREVIEW_CELL = 192  # px a picture gets in the grid


def preview_rows(config) -> list[tuple[str, str]]:
    """(label, prompt): two erase prompts (one concept in two templates, or the first two
    concepts in the first template) and the first two retain prompts."""
    concepts, templates = config.concepts, config.templates
    erase = [fill(templates[0], c.name) for c in concepts[:2]] if len(concepts) > 1 else \
        [fill(t, concepts[0].name) for t in templates[:2]]
    return [*(("erased", p) for p in erase), *(("kept", p) for p in config.retain_prompts[:2])]


def _decode(vae, samples: torch.Tensor) -> torch.Tensor:
    """The first picture (a video's first frame) as [1, 3, H, W] in 0..1."""
    images = vae.decode(samples)
    return images.reshape(-1, *images.shape[-3:])[:1].movedim(-1, 1).float().cpu()


@torch.inference_mode()
def preview_grid(denoiser, network, vae, config, seed: int = 0):
    """The grid (a PIL image): each row's prompt at one seed, base model left, network right."""
    model = denoiser.patcher
    mode = "all rows" if denoiser.distilled else "conditional only"
    cfg = 1.0 if denoiser.distilled else denoiser.guidance  # distilled: guidance in the cond
    patched = dynamic_lora_model(model, network, 1.0, mode)
    scheduler = "normal" if hasattr(model.model.model_sampling, "sigmas") else "simple"
    latent = torch.zeros((1, *denoiser.latent_shape))
    rows = preview_rows(config)
    negative = denoiser.conditioning("")
    unhyped_negative = condition("UnHype Trainer preview", network, negative)[0]
    before, after = [], []
    for k, (_, prompt) in enumerate(rows):
        positive = denoiser.conditioning(prompt)
        noise = comfy.sample.prepare_noise(latent, seed + k)
        for images, m, pos, neg in (
                (before, model, positive, negative),
                (after, patched, condition("UnHype Trainer preview", network, positive)[0],
                 unhyped_negative)):
            samples = comfy.sample.sample(m, noise, PREVIEW_STEPS, cfg, "euler", scheduler, pos,
                                          neg, latent, disable_pbar=True, seed=seed + k)
            images.append(_decode(vae, samples))
    notes = [f"{network.info.title}: the model's own samples, {PREVIEW_STEPS} euler steps at "
             f"CFG {cfg:g}, the same noise in both halves (UnHype Trainer preview)."]
    return render_grid(rows, torch.cat(before), torch.cat(after), 1, notes, PREVIEW_CELL)
