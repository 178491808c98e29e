"""The headless trainer's ComfyUI side (`python -m unhype train CONFIG`, unhype/headless.py): load
the model with ComfyUI's own loader, train as the node does, write the network and its loss plot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import comfy.model_management
import comfy.sd
import folder_paths
import torch

from ..unhype.choices import PROVING_GROUND
from ..unhype.headless_config import HeadlessConfig
from ..unhype.loss_plot import plot_png
from ..unhype.training import Progress
from .comfy_training import Outcome, TrainingError, run_training


def train_headless(config: HeadlessConfig, log: Callable[[str], None] = print,
                   group=None) -> Outcome:
    """Load the model with ComfyUI's checkpoint loader (or build the proving ground), train, save;
    progress goes to `log`. `group`: see run_training."""
    log(f"loading {config.model} (ComfyUI device: "
        f"{comfy.model_management.get_torch_device()})")
    if config.model == PROVING_GROUND:
        from . import comfy_world

        model, clip = comfy_world.build_model(), comfy_world.build_clip()
    else:
        with torch.inference_mode(False):
            model, clip = comfy.sd.load_checkpoint_guess_config(
                config.model, output_vae=False, output_clip=True,
                embedding_directory=folder_paths.get_folder_paths("embeddings"))[:2]
    if model is None:
        raise TrainingError(f"{config.model}: no diffusion model found in this file")
    if clip is None:
        raise TrainingError(f"{config.model}: this checkpoint has no text encoder (CLIP)")
    settings = config.settings
    if settings.resume and not os.path.isabs(settings.resume) and config.checkpoint_dir:
        candidate = os.path.join(config.checkpoint_dir, settings.resume)
        if os.path.isfile(candidate):
            settings.resume = candidate
    started = time.perf_counter()

    def progress(p: Progress) -> None:
        if p.step % max(1, min(10, p.steps // 20 or 1)) and p.step != p.steps:
            return
        rate = p.step / max(time.perf_counter() - started, 1e-9)
        losses = ", ".join(f"{k} {v:.4g}" for k, v in p.losses.items())
        extra = ""
        if p.erase_activation is not None:
            extra = f", activation erase {p.erase_activation:.3g} / retain " \
                    f"{p.retain_activation:.3g}"
        log(f"step {p.step}/{p.steps}: {losses}{extra} ({rate:.2f} steps/s)")
        if p.separation is not None:
            log(p.separation.summary())

    outcome = run_training(model, clip, settings, output_dir=config.output,
                           checkpoint_dir=config.checkpoint_dir, on_progress=progress, log=log,
                           group=group)
    if outcome.path:
        png = os.path.splitext(outcome.path)[0] + ".loss.png"
        with open(png, "wb") as handle:
            handle.write(plot_png(outcome.history))
        log(f"loss plot {png}")
    return outcome
