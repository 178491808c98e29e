"""UnHype Trainer: MODEL + CLIP + concepts -> a trained UNHYPE network (saved) and a loss plot.

The work happens in nodes/comfy_training.py (shared with `python -m unhype train`). This node adds
ComfyUI's progress bar (whose updates also make Cancel work), a check for Cancel after every
step (the core trainer then writes a resumable checkpoint before the cancel propagates) and
"unhype.training" messages to the page.
"""

import logging
import sys

import comfy.model_management
import comfy.utils

from ..unhype import PRESETS
from ..unhype.headless import PRESET_NAMES, ConfigError, TrainingSettings
from ..unhype.hypernet import VARIANTS
from ..unhype.training import OBJECTIVES
from .comfy_training import TrainingError, checkpoint_names, loss_plot, run_training

NO_RESUME = "none"
EVENT = "unhype.training"


def _send(event: str, data: dict) -> None:
    """A message to the page, when this runs inside the ComfyUI server."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return
    try:
        instance.send_sync(event, data)
    except Exception as error:  # the page is a convenience: never fail training over it
        logging.debug("UnHype: could not send %s: %s", event, error)


class UnHypeTrainer:
    DESCRIPTION = (
        "Trains an UnHype concept-erasure hypernetwork on this model (SD1.x, SD2.x, SDXL, "
        "Flux.1) and saves it to models/unhype. Cancel keeps a resumable checkpoint in "
        "models/unhype_checkpoints: pick it in 'resume' and queue again with the same settings. "
        "The UNHYPE output can go straight to Apply Dynamic LoRA / UnHype Conditioner."
    )
    CATEGORY = "UnHype"
    RETURN_TYPES = ("UNHYPE", "IMAGE")
    RETURN_NAMES = ("unhype", "loss_plot")
    OUTPUT_NODE = True
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        defaults = TrainingSettings()
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint: its pooled "
                                             "embedding is what the network reads."}),
                "erase_concepts": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "One concept per line; 'concept -> anchor' maps it to an anchor "
                               "(e.g. 'tench -> fish'). Without an anchor the preset's is used."}),
                "preset": (list(PRESET_NAMES), {
                    "default": defaults.preset,
                    "tooltip": "Templates, eta, rank and default anchor: objects (empty anchor, "
                               "eta 0.3), people ('a person', eta 1), explicit content ('a fully "
                               "clothed person', eta 2, rank 1), custom (the optional inputs)."}),
                "objective": (list(OBJECTIVES), {
                    "default": defaults.objective,
                    "tooltip": "trajectory: the paper's; direct: ESD loss at s=T (ablation)."}),
                "steps": ("INT", {"default": defaults.steps, "min": 1, "max": 1_000_000}),
                "learning_rate": ("FLOAT", {"default": defaults.learning_rate, "min": 1e-7,
                                            "max": 1.0, "step": 1e-5, "round": False}),
                "rank": ("INT", {"default": 0, "min": 0, "max": 64,
                                 "tooltip": "0: the preset's rank (6; 1 for explicit content; "
                                            "4 on Flux)."}),
                "variant": (list(VARIANTS), {
                    "default": defaults.variant,
                    "tooltip": "paper: one MLP pair per layer (~180M parameters on SD1.x); "
                               "compact: a shared trunk (far smaller)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "save_name": ("STRING", {
                    "default": "unhype",
                    "tooltip": "File name in models/unhype (letters, digits, _ - . only; an "
                               "existing file is never overwritten: _2, _3 ... is appended)."}),
                "checkpoint_every": ("INT", {"default": defaults.checkpoint_every, "min": 1,
                                             "max": 1_000_000}),
            },
            "optional": {
                "retain_prompts": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Prompts to keep untouched, one per line, used together with the "
                               "built-in list of everyday prompts."}),
                "builtin_retain": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Also keep the built-in list of a few hundred everyday prompts "
                               "untouched."}),
                "resume": ([NO_RESUME, *checkpoint_names()], {
                    "default": NO_RESUME,
                    "tooltip": "A checkpoint from models/unhype_checkpoints to continue (same "
                               "settings; steps may grow)."}),
                "templates": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "custom preset: prompt templates, one per line, '{}' = concept."}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                  "tooltip": "custom preset: ESD guidance strength."}),
                "target_preset": (["auto", *sorted(PRESETS)], {
                    "default": "auto",
                    "tooltip": "Layers that get the LoRA; auto picks from the model family."}),
                "hidden": ("INT", {"default": 0, "min": 0, "max": 4096,
                                   "tooltip": "Hypernetwork width; 0: 512 (SD) / 100 (Flux)."}),
                "guidance": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1,
                                       "tooltip": "CFG of the ESD sampling (Flux: guidance); "
                                                  "0: 7.5 (Flux 3.5)."}),
                "sampling_steps": ("INT", {"default": 50, "min": 2, "max": 1000,
                                           "tooltip": "Schedule length of the ESD partial "
                                                      "sampling."}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8,
                                       "tooltip": "Training resolution in pixels; 0: 512 SD1 / "
                                                  "768 SD2 / 1024 SDXL / 512 Flux."}),
                "xt_cache_size": ("INT", {"default": 32, "min": 0, "max": 4096,
                                          "tooltip": "x_t samples kept per concept and reused; "
                                                     "0 samples every step."}),
                "hide_concepts": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Record only a SHA-256 of the concept list in the file, not the "
                               "concepts and anchors."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, erase_concepts, preset, objective, steps, learning_rate, rank,
              variant, seed, save_name, checkpoint_every, retain_prompts="", builtin_retain=True,
              resume=NO_RESUME, templates="", eta=1.0, target_preset="auto", hidden=0, guidance=0.0,
              sampling_steps=50, resolution=0, xt_cache_size=32, hide_concepts=False,
              unique_id=None):
        node = "UnHype Trainer"
        if not erase_concepts or not erase_concepts.strip():
            raise ValueError(f"{node}: no concepts to erase: write one per line in "
                             "'erase_concepts', e.g. 'tench -> fish'")
        settings = TrainingSettings(
            concepts=erase_concepts, retain_prompts=retain_prompts or "",
            builtin_retain=bool(builtin_retain), preset=preset,
            templates=templates or "", eta=float(eta), target_preset=target_preset,
            objective=objective, steps=int(steps), learning_rate=float(learning_rate),
            rank=int(rank), variant=variant, hidden=int(hidden), seed=int(seed),
            save_name=save_name, checkpoint_every=int(checkpoint_every),
            resume="" if resume in (None, NO_RESUME) else resume, guidance=float(guidance),
            sampling_steps=int(sampling_steps), resolution=int(resolution),
            xt_cache_size=int(xt_cache_size), hide_concepts=bool(hide_concepts))
        bar = comfy.utils.ProgressBar(int(steps), node_id=unique_id)

        def on_progress(progress):
            bar.update_absolute(progress.step, progress.steps)
            _send(EVENT, {
                "node": unique_id, "step": progress.step, "steps": progress.steps,
                "losses": progress.losses, "erase_activation": progress.erase_activation,
                "retain_activation": progress.retain_activation, "seconds": progress.seconds})
            # Cancel: raises InterruptProcessingException; the trainer checkpoints first.
            comfy.model_management.throw_exception_if_processing_interrupted()

        try:
            outcome = run_training(model, clip, settings, on_progress=on_progress,
                                   log=lambda line: logging.info("UnHype Trainer: %s", line))
        except (TrainingError, ConfigError) as error:  # user-facing; anything else is a bug
            raise ValueError(f"{node}: {error}") from None
        _send(EVENT, {"node": unique_id, "done": True, "file": outcome.name})
        plot = loss_plot(outcome.history)
        return {"ui": {"text": [outcome.report]}, "result": (outcome.network, plot)}
