"""UnHype Bake LoRA: the LoRA a network generates for one prompt, saved as an ordinary LoRA file.

The prompt's embedding is read from the conditioning exactly as Apply Dynamic LoRA reads it at
sampling time (nodes/conditioner.py), the LoRA is made by the core (unhype/bake.py) and written
to models/loras under a sanitised, never-overwritten name.
"""

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..unhype.bake import (
    KEY_FORMATS,
    bake_lora,
    concepts_line,
    hides_concepts,
    lora_metadata,
    save_lora,
)
from ..unhype.files import EXTENSION, sanitise_name, unique_path
from .sampling.reading import describe
from .sampling.refresh import PartsAtSampling
from .sampling.wire import flagged, packed_row, vectors
from .schema import CATEGORY, ERASURE, UnHype

NODE = "UnHype Bake LoRA"
FOLDER = "loras"


def read_prompt(network, conditioning) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled embedding [1, D], token states [1, T, C]) of the one prompt in `conditioning`.

    An entry whose tokens changed after UnHype Conditioner (a Concat) is re-read as sampling
    would (PartsAtSampling); several entries must describe the same prompt: a static LoRA has
    one set of weights.
    """
    if not conditioning:
        raise ValueError(f"{NODE}: the conditioning is empty")
    prompts = []
    for index, (tokens, options) in enumerate(conditioning):
        packed = packed_row(options)
        if packed is None:
            raise ValueError(
                f"{NODE}: conditioning entry {index + 1} carries no UnHype embedding: connect "
                "the output of UnHype Conditioner or UnHype Text Encode")
        width = packed.shape[-1] - 1
        if width != network.config.embed_dim:
            raise ValueError(
                f"{NODE}: the conditioning carries {width}-d embeddings but the network "
                f"'{network.info.title}' reads {network.config.embed_dim}-d ones: use the same "
                "network in UnHype Conditioner and here")
        entry = {**options, "cross_attn": tokens}
        PartsAtSampling(network).refresh(entry)
        packed = packed_row(entry)
        if not bool(flagged(packed)[0]):
            raise ValueError(f"{NODE}: conditioning entry {index + 1} is marked to run the base "
                             "model: there is no LoRA to bake")
        prompts.append((vectors(packed[:1]).float(), tokens))
    embedding, tokens = prompts[0]
    for other, other_tokens in prompts[1:]:
        if not torch.equal(other, embedding) or not torch.equal(other_tokens, tokens):
            raise ValueError(
                f"{NODE}: the conditioning has {len(conditioning)} entries with different "
                "prompts (Conditioning (Combine), areas?), and a baked LoRA holds one prompt's "
                "weights: bake each prompt from its own text encoder")
    return embedding, tokens


GATED = ("the prompt does not trigger the network: Apply Dynamic LoRA leaves it untouched, so "
         "the baked LoRA is all zeros and changes nothing")


def readout(network, embedding) -> tuple[float, bool]:
    activation, triggered = network.readout(embedding)
    return float(activation[0]), bool(triggered[0])


def cap_lines(network, layers, strength: float) -> list[str]:
    """What the norm cap does for this prompt, and where the baked file differs from it."""
    cap = network.config.norm_cap
    if cap is None:
        return ["norm cap: none in this network (the baked LoRA is the dynamic one exactly)"]
    baked = [layer for layer in layers if layer.cap == "baked"]
    binding = [layer for layer in baked if layer.gain < 1.0]
    lines = []
    if baked:
        largest = max(layer.output_norm for layer in baked)
        lines.append(
            f"norm cap {cap:g}: {len(baked)} layers read the prompt's tokens (LoRA output norms "
            f"up to {largest:.3g}), so their cap is baked exactly; it binds on {len(binding)}"
            + (f" (gains {min(x.gain for x in binding):.3g}..{max(x.gain for x in binding):.3g})"
               if binding else ""))
    unbaked = {"image": ("read the image, which changes with the latent and the step",
                         "wherever the cap does not bind there, and is stronger where it would"),
               "embedded": ("read the prompt through the model's own text embedding, which "
                            "the bake does not run", "where the cap does not bind for this "
                            "prompt, and is stronger where it does")}
    for kind, (reads, where) in unbaked.items():
        count = sum(layer.cap == kind for layer in layers)
        if count:
            lines.append(f"norm cap {cap:g}: {count} layers {reads}: their cap is not baked, so "
                         f"the file equals Apply Dynamic LoRA (strength {strength:g}) {where}")
    return lines


class UnHypeBakeLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeBakeLoRA",
            display_name=NODE,
            category=CATEGORY,
            description=(
                "Saves the LoRA the UnHype network generates for one prompt as an ordinary LoRA "
                "file in models/loras (load it with LoraLoaderModelOnly at strength 1, or share "
                "it). Connect the prompt's conditioning from UnHype Conditioner / UnHype Text "
                "Encode. A static LoRA applies to every prompt, the negative included."),
            search_aliases=[*ERASURE, "bake LoRA", "export LoRA", "save LoRA"],
            is_output_node=True,
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="One prompt, from UnHype "
                                                              "Conditioner or UnHype Text Encode."),
                UnHype.Input("unhype"),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="Apply Dynamic LoRA's strength to bake (the norm cap "
                                       "depends on it); load the file at strength 1."),
                io.String.Input("save_name", default="unhype_baked"),
                io.Combo.Input("key_format", options=list(KEY_FORMATS), default=KEY_FORMATS[0],
                               tooltip="comfyui: diffusion_model.<layer> keys (ComfyUI's LoRA "
                                       "saver); kohya: lora_unet_<layer> keys. ComfyUI loads "
                                       "both."),
                io.String.Input("prompt", optional=True, multiline=True, default="",
                                tooltip="The prompt's text, for the file's title and description "
                                        "only (stored as a SHA-256 when the network hides its "
                                        "concepts)."),
            ],
            outputs=[
                io.String.Output(display_name="lora_name",
                                 tooltip="The saved file's name in models/loras."),
                io.String.Output(display_name="report", tooltip="What was baked, and how."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, unhype, strength, save_name, key_format,
                prompt="") -> io.NodeOutput:
        embedding, tokens = read_prompt(unhype, conditioning)
        baked = bake_lora(unhype, embedding, tokens, strength, key_format)
        stem = sanitise_name(save_name)
        path = unique_path(folder_paths.get_folder_paths(FOLDER)[0], stem)
        save_lora(path, baked, lora_metadata(unhype, baked, prompt, strength, stem))
        name = os.path.basename(path)
        hidden = hides_concepts(unhype) and prompt.strip()
        report = "\n".join([
            f"saved {name}" + ("" if name == stem + EXTENSION
                               else f" ({stem}{EXTENSION} exists: not overwritten)"),
            f"folder {os.path.dirname(path)}",
            f"from {unhype.info.title} [{unhype.info.base_arch}, {unhype.info.target_preset}], "
            f"{len(baked.layers)} layers, rank {baked.rank}, strength {strength:g}, "
            f"{key_format} keys",
            concepts_line(unhype),
            f"prompt: {describe(readout(unhype, embedding), unhype)}"
            + (" (its text is stored as a SHA-256: the network hides its concepts)"
               if hidden else ""),
            *([GATED] if baked.gated else cap_lines(unhype, baked.layers, strength)),
            "Load with LoraLoaderModelOnly at strength 1: it applies to every prompt, the "
            "negative too, unlike Apply Dynamic LoRA.",
        ])
        return io.NodeOutput(name, report, ui={"text": [report]})
