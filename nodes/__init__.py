"""The UnHype nodes. NODES lists (class name, display name, class) for every node."""

from . import apply, conditioner, loader

NODES = [
    ("UnHypeLoader", "UnHype Loader", loader.UnHypeLoader),
    ("UnHypeConditioner", "UnHype Conditioner", conditioner.UnHypeConditioner),
    ("UnHypeTextEncode", "UnHype Text Encode", conditioner.UnHypeTextEncode),
    ("ApplyDynamicLoRA", "Apply Dynamic LoRA", apply.ApplyDynamicLoRA),
]

from . import trainer  # noqa: E402  (the UnHype Trainer, nodes/trainer.py)

NODES.append(("UnHypeTrainer", "UnHype Trainer", trainer.UnHypeTrainer))

from . import proving_ground  # noqa: E402  (the world of unhype/world/ as MODEL, CLIP, VAE)

NODES.append(("UnHypeProvingGround", "UnHype Proving Ground", proving_ground.UnHypeProvingGround))

from . import bake  # noqa: E402  (a prompt's LoRA as an ordinary LoRA file)

NODES.append(("UnHypeBakeLoRA", "UnHype Bake LoRA", bake.UnHypeBakeLoRA))

from . import erasure_check  # noqa: E402  (original vs UnHype images, judged offline)

NODES.append(("UnHypeErasureCheck", "UnHype Erasure Check", erasure_check.UnHypeErasureCheck))

NODE_CLASS_MAPPINGS = {name: cls for name, _, cls in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {name: display for name, display, _ in NODES}
