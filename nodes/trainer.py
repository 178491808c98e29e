"""UnHype Trainer: MODEL + CLIP + concepts -> a trained UNHYPE network (saved) and a loss plot.

The work happens in nodes/training/run.py (shared with `python -m unhype train`). This node adds
ComfyUI's progress bar (whose updates also make Cancel work), a check for Cancel after every
step (the core trainer then writes a resumable checkpoint before the cancel propagates) and
"unhype.training" messages to the page.
"""

import logging
import sys

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..unhype.families import checkpoint_labels
from ..unhype.loss_plot import loss_plot
from ..unhype.settings import SETTINGS, ConfigError, Setting, TrainingSettings
from .folders import checkpoint_names
from .schema import CATEGORY, ERASURE, UnHype
from .training.run import run_training

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


def _input(setting: Setting) -> io.Input:
    """A node input from its one declaration in unhype/settings.py."""
    common = {"optional": setting.optional, "tooltip": setting.tooltip,
              "advanced": setting.advanced or None}
    if setting.name == "resume":
        return io.Combo.Input(setting.name, options=[NO_RESUME, *checkpoint_names()],
                              default=NO_RESUME, **common)
    if setting.choices:
        return io.Combo.Input(setting.name, options=list(setting.choices),
                              default=setting.default, **common)
    if setting.kind is str:
        return io.String.Input(setting.name, default=setting.default,
                               multiline=setting.multiline, **common)
    if setting.kind is bool:
        return io.Boolean.Input(setting.name, default=setting.default, **common)
    if setting.kind is float:
        return io.Float.Input(setting.name, default=setting.default, min=setting.low,
                              max=setting.high, step=setting.step or 0.01, round=False, **common)
    return io.Int.Input(setting.name, default=setting.default, min=setting.low, max=setting.high,
                        step=int(setting.step) if setting.step else None, **common)


class UnHypeTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeTrainer",
            display_name="UnHype Trainer",
            category=CATEGORY,
            description=(
                "Trains an UnHype concept-erasure hypernetwork on this model "
                f"({', '.join(checkpoint_labels(trains_only=True))}) and saves it to "
                "models/unhype. Cancel keeps a resumable checkpoint in "
                "models/unhype_checkpoints: pick it in 'resume' and queue again with the same "
                "settings. The UNHYPE output can go straight to Apply Dynamic LoRA / UnHype "
                "Conditioner."),
            search_aliases=[*ERASURE, "train", "training", "train LoRA", "hypernetwork"],
            is_experimental=True,  # as core's own trainer: training in the UI is new ground
            is_output_node=True,
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint: the "
                                              "network reads its CLIP pooled embedding, or on "
                                              "a family without one its conditioning."),
                *(_input(setting) for setting in SETTINGS),
                # optional and last: API prompts written before it stay valid
                io.Vae.Input("vae", optional=True,
                             tooltip="The VAE of the same checkpoint: with it, the Trainer "
                                     "draws a preview beside the network (two erase and two "
                                     "retain prompts, without and with it) for its page on a "
                                     "model host."),
            ],
            outputs=[
                UnHype.Output(display_name="unhype",
                              tooltip="The trained network, also saved to models/unhype: into "
                                      "Apply Dynamic LoRA and UnHype Conditioner."),
                io.Image.Output(display_name="loss_plot", tooltip="The run's loss curves."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, clip, vae=None, **inputs) -> io.NodeOutput:
        node, unique_id = "UnHype Trainer", cls.hidden.unique_id
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
                "retain_activation": progress.retain_activation, "seconds": progress.seconds,
                "separation": progress.separation and progress.separation.to_dict()})
            if progress.separation is not None:
                logging.info("UnHype Trainer: %s", progress.separation.summary())
            # Cancel: raises InterruptProcessingException; the trainer checkpoints first.
            comfy.model_management.throw_exception_if_processing_interrupted()

        try:
            outcome = run_training(model, clip, settings, vae=vae, on_progress=on_progress,
                                   log=lambda line: logging.info("UnHype Trainer: %s", line))
        except ConfigError as error:  # user-facing; anything else is a bug
            raise ValueError(f"{node}: {error}") from None
        _send(EVENT, {"node": unique_id, "done": True, "file": outcome.name})
        plot = loss_plot(outcome.history)
        return io.NodeOutput(outcome.network, plot, ui={"text": [outcome.report]})
