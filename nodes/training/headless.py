"""The headless trainer's ComfyUI side (`python -m unhype train CONFIG`, unhype/headless.py): load
the model with ComfyUI's own loader, train as the node does, write the network and its loss plot.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable

import comfy.model_management
import comfy.sd
import folder_paths
import torch

from ...unhype.choices import PROVING_GROUND
from ...unhype.files import FileWriteError, cannot_write
from ...unhype.headless import CHECKPOINT_HINT
from ...unhype.headless_config import HeadlessConfig
from ...unhype.loss_plot import plot_png
from ...unhype.training import Progress
from ..folders import CHECKPOINTS, NETWORKS, first_folder
from .run import Outcome, TrainingError, run_training


def train_headless(config: HeadlessConfig, log: Callable[[str], None] = print,
                   group=None) -> Outcome:
    """Load the model with ComfyUI's checkpoint loader (or build the proving ground), train, save;
    progress goes to `log`. `group`: see run_training."""
    log(f"loading {config.model} (ComfyUI device: "
        f"{comfy.model_management.get_torch_device()})")
    if config.model == PROVING_GROUND:
        from .. import comfy_world

        model, clip = comfy_world.build_model(), comfy_world.build_clip()
    else:
        model, clip = load_checkpoint(config.model)
    if model is None:
        raise TrainingError(f"model {config.model}: no diffusion model found in this file: "
                            f"{CHECKPOINT_HINT}")
    if clip is None:
        raise TrainingError(f"model {config.model}: this file has no text encoder (CLIP): "
                            f"{CHECKPOINT_HINT}")
    output = config.output or first_folder(NETWORKS)
    checkpoints = config.checkpoint_dir or first_folder(CHECKPOINTS)
    for key, folder in (("output", output), ("checkpoint_dir", checkpoints)):
        reason = cannot_write(folder)
        if reason:
            raise TrainingError(f"{key} {folder}: cannot write there ({reason}); set {key} in "
                                "the config to a folder you can write to")
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

    outcome = run_training(model, clip, settings, output_dir=output, checkpoint_dir=checkpoints,
                           on_progress=progress, log=log, group=group)
    if outcome.path:
        png = os.path.splitext(outcome.path)[0] + ".loss.png"
        try:
            with open(png, "wb") as handle:
                handle.write(plot_png(outcome.history))
        except OSError as error:
            raise FileWriteError(error.errno, f"cannot write {png}: {error.strerror} (the "
                                              f"network is saved: {outcome.path})") from None
        log(f"loss plot {png}")
    return outcome


def _raised_in_torch_load(error: BaseException) -> bool:
    """Did torch.load (its weights-only unpickler included) raise `error`?"""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__", "") in ("torch.serialization",
                                                             "torch._weights_only_unpickler"):
            return True
        frame = frame.tb_next
    return False


def load_checkpoint(path: str):
    """(MODEL, CLIP) from ComfyUI's checkpoint loader; a file it cannot load as a checkpoint is
    a TrainingError (unhype/headless.py has refused the files it can tell apart already)."""
    try:
        with torch.inference_mode(False):
            return comfy.sd.load_checkpoint_guess_config(
                path, output_vae=False, output_clip=True,
                embedding_directory=folder_paths.get_folder_paths("embeddings"))[:2]
    except Exception as error:  # torch.load, safetensors and model detection raise their own
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if "Could not detect model type" in first:
            reason = "ComfyUI recognises no diffusion model in it (a VAE, a text encoder?)"
        elif isinstance(error, pickle.UnpicklingError) or _raised_in_torch_load(error):
            # nothing that runs code is loaded; random bytes fail in the unpickler in many ways
            reason = ("not a .safetensors file, and torch.load(weights_only=True) refuses it "
                      "(damaged, or a pickle that would run code)")
        else:
            reason = f"ComfyUI cannot load it as a checkpoint ({type(error).__name__}: {first})"
        raise TrainingError(f"model {path}: {reason}: {CHECKPOINT_HINT}") from None
