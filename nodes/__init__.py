"""The UnHype nodes (ComfyUI's V3 node API), in the order the node menu lists them."""

from .apply import UnHypeApplyDynamicLoRA
from .audit import UnHypeAudit
from .bake import UnHypeBakeLoRA
from .conditioner import UnHypeConditioner, UnHypeTextEncode
from .erasure_check import UnHypeErasureCheck
from .loader import UnHypeLoader
from .proving_ground import UnHypeProvingGround
from .trainer import UnHypeTrainer

NODES = [
    UnHypeLoader, UnHypeConditioner, UnHypeTextEncode, UnHypeApplyDynamicLoRA, UnHypeTrainer,
    UnHypeProvingGround, UnHypeBakeLoRA, UnHypeErasureCheck, UnHypeAudit,
]
