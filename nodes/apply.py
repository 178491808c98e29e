"""Apply Dynamic LoRA: MODEL + UNHYPE -> MODEL whose every batch row gets its prompt's LoRA."""

from comfy_api.latest import io

from .sampling.dynamic_lora import MODES
from .sampling.patch import dynamic_lora_model
from .schema import CATEGORY, ERASURE, UnHype


class UnHypeApplyDynamicLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeApplyDynamicLoRA",
            display_name="Apply Dynamic LoRA",
            category=CATEGORY,
            description=(
                "Makes the model apply, during sampling, the LoRA that the UnHype network "
                "generates from each prompt's embedding (attached by UnHype Conditioner / UnHype "
                "Text Encode). 'conditional only' (SD1.x/SDXL with CFG): the negative runs the "
                "base model. 'all rows': every prompt gets its LoRA (Flux and other "
                "guidance-distilled models)."),
            search_aliases=[*ERASURE, "dynamic LoRA", "per-prompt LoRA", "hypernetwork"],
            inputs=[
                io.Model.Input("model"),
                UnHype.Input("unhype"),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Multiplies every generated LoRA."),
                io.Combo.Input("mode", options=list(MODES), default=MODES[0]),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with each prompt's LoRA added at sampling "
                                        "time; its weights are not changed."),
            ],
        )

    @classmethod
    def execute(cls, model, unhype, strength, mode) -> io.NodeOutput:
        return io.NodeOutput(dynamic_lora_model(model, unhype, strength, mode))
