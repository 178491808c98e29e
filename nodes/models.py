"""Which family (unhype/families.py) a ComfyUI MODEL is: what Apply Dynamic LoRA, Bake LoRA and
the Trainer ask before they touch it."""

import comfy.supported_models

from ..unhype import families


class UnsupportedModelError(ValueError):
    """The MODEL is not one of the families UnHype knows."""


def model_family(model) -> str:
    """The family (unhype/families.py) of a ComfyUI MODEL (ModelPatcher); raises for others.

    A model config may name its family in a class attribute `unhype_family` (the proving ground
    does); read from the class because model configs log a warning for unknown attributes.
    Otherwise the most derived comfy.supported_models class of the config decides, so a
    subclass with an entry of its own (Flux2 of Flux) is its own family, whatever the table's
    order, and a subclass of a family whose entry takes none (Wan's image-to-video and other
    variants) is refused. Whether the Trainer can train the family is the caller's question
    (`Family.trains`).
    """
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    if getattr(type(config), "unhype_family", None) in families.FAMILIES:
        return type(config).unhype_family
    by_class = {name: f for f in families.FAMILIES.values() for name in f.comfy_configs}
    variant_of = ""
    classes = [cls for cls in type(config).__mro__
               if getattr(comfy.supported_models, cls.__name__, None) is cls]
    for depth, cls in enumerate(classes):
        entry = by_class.get(cls.__name__)
        if entry is not None and (depth == 0 or entry.comfy_subclasses):
            return entry.name
        if entry is not None:
            variant_of = (f", a variant of {cls.__name__} that UnHype does not take: of its "
                          f"classes only {' and '.join(entry.comfy_configs)} are {entry.label}")
            break
    name = type(config).__name__ if config is not None else type(base).__name__
    labels, trained = families.checkpoint_labels(), families.checkpoint_labels(trains_only=True)
    trains = "all of them" if trained == labels else \
        f"{', '.join(trained[:-1])} and {trained[-1]}"
    raise UnsupportedModelError(
        f"UnHype works on {', '.join(labels[:-1])} and {labels[-1]} models (and trains on "
        f"{trains}); this MODEL is {name}{variant_of}. Load an {' / '.join(labels)} checkpoint."
    )
