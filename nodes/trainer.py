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

from ..unhype.settings import SETTINGS, ConfigError, Setting, TrainingSettings
from .aliases import ERASURE
from .comfy_training import checkpoint_names, loss_plot, run_training

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


def _widget(setting: Setting) -> tuple:
    """A node input from its one declaration in unhype/settings.py."""
    options = {"default": setting.default, "tooltip": setting.tooltip}
    if setting.advanced:
        options["advanced"] = True
    if setting.name == "resume":
        return [NO_RESUME, *checkpoint_names()], {**options, "default": NO_RESUME}
    if setting.choices:
        return list(setting.choices), options
    if setting.kind is str:
        return "STRING", {**options, "multiline": setting.multiline}
    if setting.kind is bool:
        return "BOOLEAN", options
    options.update(min=setting.low, max=setting.high)
    if setting.kind is float:
        options.update(step=setting.step or 0.01, round=False)
    elif setting.step:
        options["step"] = int(setting.step)
    return ("FLOAT" if setting.kind is float else "INT"), options


class UnHypeTrainer:
    DESCRIPTION = (
        "Trains an UnHype concept-erasure hypernetwork on this model (SD1.x, SD2.x, SDXL, "
        "Flux.1) and saves it to models/unhype. Cancel keeps a resumable checkpoint in "
        "models/unhype_checkpoints: pick it in 'resume' and queue again with the same settings. "
        "The UNHYPE output can go straight to Apply Dynamic LoRA / UnHype Conditioner."
    )
    CATEGORY = "UnHype"
    SEARCH_ALIASES = [*ERASURE, "train", "training", "train LoRA", "hypernetwork"]
    EXPERIMENTAL = True  # as core's own trainer: training in the UI is new ground
    RETURN_TYPES = ("UNHYPE", "IMAGE")
    RETURN_NAMES = ("unhype", "loss_plot")
    OUTPUT_TOOLTIPS = ("The trained network, also saved to models/unhype: into Apply Dynamic LoRA "
                       "and UnHype Conditioner.",
                       "The run's loss curves.")
    OUTPUT_NODE = True
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "model": ("MODEL",),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint: its pooled embedding "
                                         "is what the network reads."}),
        }
        optional = {}
        for setting in SETTINGS:
            (optional if setting.optional else required)[setting.name] = _widget(setting)
        return {"required": required, "optional": optional,
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def train(self, model, clip, unique_id=None, **inputs):
        node = "UnHype Trainer"
        if inputs.get("resume") == NO_RESUME:
            inputs["resume"] = ""
        try:
            settings = TrainingSettings(**inputs).validate()
        except (TypeError, ConfigError) as error:
            raise ValueError(f"{node}: {error}") from None
        bar = comfy.utils.ProgressBar(1, node_id=unique_id)

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
        except ConfigError as error:  # user-facing; anything else is a bug
            raise ValueError(f"{node}: {error}") from None
        _send(EVENT, {"node": unique_id, "done": True, "file": outcome.name})
        plot = loss_plot(outcome.history)
        return {"ui": {"text": [outcome.report]}, "result": (outcome.network, plot)}
