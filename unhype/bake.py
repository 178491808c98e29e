"""Bake the LoRA an UnHype network generates for one prompt into an ordinary LoRA file.

Apply Dynamic LoRA adds, to each target's output for a row, strength · gain · up down x, where
`gain` is the per-row norm cap (unhype/lora.py `row_lora_delta`): min(1, cap / ‖LoRA output‖)
over the row's tokens. A static LoRA has no such factor, so it is folded into `up` where it is
fixed for the prompt: layers that read the prompt's own tokens (SD-style cross-attention k/v,
Flux's `txt_in`: their input is the conditioning tensor) get exactly the dynamic path's gain.
Layers whose input is the image or the step (self-attention, the Flux blocks' streams) change
with the latent and the step: their cap is not baked, and the baked LoRA equals the dynamic one
wherever the cap does not bind there. Layers that read the prompt through a layer of the
model's own (`Family.embedded_prompt_targets`: Wan's cross-attention k/v after its text
embedding, Qwen-Image's `txt_in` after `txt_norm`), which the bake does not run: their cap is
not baked either.

A prompt that does not pass the network's gate (unhype/gate.py) gets no LoRA from Apply Dynamic
LoRA, so it bakes to a LoRA whose up matrices are all zero: loading it changes nothing.

Fused Flux targets (the v slice of `qkv` / `linear1`) are written as a LoRA of the whole fused
weight whose up rows outside the slice are zero, so every loader that reads plain keys applies
it, and exactly to the slice.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from .families import family
from .fileformat import IMPLEMENTATION_URL, modelspec
from .fileformat import tensor_sha256 as file_hash
from .files import save_atomically
from .gate import triggers
from .hypernet import RowFactors, lora_norm
from .lora import row_lora_delta
from .network import UnHypeNetwork

#: "comfyui": `diffusion_model.<module>.lora_up.weight` (what ComfyUI's own LoRA saver writes);
#: "kohya": `lora_unet_<module with _>.lora_up.weight`. ComfyUI loads both.
KEY_FORMATS = ("comfyui", "kohya")
#: Targets whose input is the prompt's token states (the conditioning tensor) in every family
#: whose targets carry these names (SD1.x, SD2.x, SDXL, the proving ground; Flux's `txt_in`),
#: unless the family's entry says they read it through a layer of its own
READS_PROMPT = re.compile(r"(^|\.)attn2\.to_[kv]$|^txt_in$")


@dataclass
class BakedLayer:
    name: str
    #: the norm cap's factor folded into this layer (1.0: the cap does not bind or is not baked)
    gain: float
    #: "baked" (exact for the prompt), "image" (input varies with the image: not baked),
    #: "embedded" (the prompt through the model's text embedding: not baked), "off"
    cap: str
    #: LoRA output norm on the prompt's tokens, for layers that read them
    output_norm: float | None = None


@dataclass
class BakedLoRA:
    tensors: dict[str, torch.Tensor]
    layers: list[BakedLayer]
    rank: int
    embedding_sha256: str
    #: the prompt does not pass the network's gate (unhype/gate.py): every up is zero
    gated: bool = False


def lora_key(module: str, key_format: str) -> str:
    if key_format == "comfyui":
        return f"diffusion_model.{module}"
    if key_format == "kohya":
        return "lora_unet_" + module.replace(".", "_")
    raise ValueError(f"key format must be one of {KEY_FORMATS}, got {key_format!r}")


def tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


@torch.no_grad()
def bake_lora(network: UnHypeNetwork, embedding: torch.Tensor, context: torch.Tensor,
              strength: float = 1.0, key_format: str = "comfyui") -> BakedLoRA:
    """The LoRA Apply Dynamic LoRA gives the prompt with pooled `embedding` [1, D] and
    conditioning tensor `context` [1, T, C] at `strength`; the norm cap is baked for the layers
    that read `context`. Tensors are float32 on the CPU, alpha = rank (scale 1).
    """
    embedding = embedding.detach().reshape(1, -1).float()
    factors = network.factors(embedding)
    gated = not bool(triggers(lora_norm(factors), network.info.gate_threshold)[0])
    if gated:  # Apply Dynamic LoRA gives this prompt no LoRA: bake exactly that, a zero one
        factors = {n: RowFactors(f.down, torch.zeros_like(f.up)) for n, f in factors.items()}
    cap = network.config.norm_cap
    context = context.detach().reshape(1, -1, context.shape[-1]).float()
    tensors, layers, rank = {}, [], network.config.rank
    scale = torch.tensor([float(strength)])
    embedded = family(network.info.base_arch).embedded_prompt_targets
    for target in network.targets:
        f = factors[target.name]
        through_model = bool(embedded) and re.search(embedded, target.name) is not None
        layer = BakedLayer(target.name, 1.0,
                           "off" if cap is None else "embedded" if through_model else "image")
        if READS_PROMPT.search(target.name) and not through_model:
            if context.shape[-1] != target.in_features:
                raise ValueError(
                    f"{target.name} reads {target.in_features}-d tokens but the conditioning's "
                    f"are {context.shape[-1]}-d: it was not made with this model's text encoder")
            uncapped = row_lora_delta(context, f, scale).norm()
            layer.output_norm = float(uncapped)
            if cap is not None:
                capped = row_lora_delta(context, f, scale, cap).norm()
                layer.gain = float(capped / uncapped) if uncapped > 0 else 1.0
                layer.cap = "baked"
        up = f.up[0].to("cpu", torch.float32) * (float(strength) * layer.gain)
        if target.out_slice is not None:
            low, high = target.out_slice
            whole = up.new_zeros(target.out_features, rank)
            whole[low:high] = up
            up = whole
        key = lora_key(target.name, key_format)
        tensors[f"{key}.lora_up.weight"] = up.contiguous()
        tensors[f"{key}.lora_down.weight"] = f.down[0].to("cpu", torch.float32).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
        layers.append(layer)
    return BakedLoRA(tensors, layers, rank, tensor_sha256(embedding), gated)


def hides_concepts(network: UnHypeNetwork) -> bool:
    """Whether the network was trained with hide_concepts: its training record has the concepts'
    SHA-256 but not the concepts. A network without a record (hand-built, or older) hides
    nothing: there is nothing it was told to hide."""
    training = network.info.training
    return bool(training.get("hide_concepts")) or (
        "concepts_sha256" in training and "concepts" not in training)


def concepts_line(network: UnHypeNetwork) -> str:
    """What the network's training record says it erases, for the bake report."""
    training = network.info.training
    if not training:
        return "concepts: no training record (a hand-built or older network): unknown"
    if hides_concepts(network):
        count = training.get("concept_count", "?")
        return f"concepts: hidden ({count}, SHA-256 {training.get('concepts_sha256', '?')})"
    if "concepts" in training:
        names = [str(name) for name in training["concepts"]]
        more = f" ... ({len(names)} in all)" if len(names) > 10 else ""
        return f"concepts: {', '.join(names[:10])}{more}"
    return "concepts: not in its training record"


def lora_metadata(network: UnHypeNetwork, baked: BakedLoRA, prompt: str, strength: float,
                  title: str) -> dict[str, str]:
    """ModelSpec keys naming the source network and the prompt (its SHA-256 when the network
    hides its concepts: the prompt would tell them), plus what a reader needs to reproduce it.
    A network without a training record is said to have none."""
    info, prompt = network.info, prompt.strip()
    if not prompt:
        shown, record = "an unnamed prompt", {}
    elif hides_concepts(network):
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        shown, record = f"a prompt with SHA-256 {digest}", {"prompt_sha256": digest}
    else:
        shown, record = repr(prompt), {"prompt": prompt}
    source = {key: info.training[key] for key in ("concepts", "concepts_sha256", "concept_count")
              if key in info.training}
    if not info.training:
        source["training_record"] = "none (a hand-built or older network)"
    baked_cap = [layer.name for layer in baked.layers if layer.cap == "baked"]
    description = (
        f"Static LoRA baked from the UnHype network '{info.title}' ({info.base_arch}, "
        f"{info.target_preset}{'' if info.training else '; no training record'}) for {shown} "
        f"at strength {strength:g}: the LoRA Apply Dynamic "
        "LoRA gives that prompt. Loaded as an ordinary LoRA it applies to every prompt, the "
        "negative included.")
    base = family(info.base_arch)
    return {
        **modelspec(
            architecture=f"{base.modelspec_architecture}/lora",
            implementation=IMPLEMENTATION_URL,
            title=title,
            resolution=f"{base.resolution}x{base.resolution}",
            description=description,
            author=info.author,
            date=datetime.now(UTC).isoformat(timespec="seconds"),
            hash_sha256=file_hash(baked.tensors),
            license=base.licence,
            tags="unhype,concept-erasure,lora,baked",
        ),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(baked.rank),
        "ss_network_alpha": str(baked.rank),
        "unhype.baked_from": json.dumps({
            "network": info.title, "base_arch": info.base_arch,
            "target_preset": info.target_preset, **source, **record,
            "embedding_sha256": baked.embedding_sha256, "strength": strength,
            "gated": baked.gated,
            "norm_cap": network.config.norm_cap, "cap_baked_layers": len(baked_cap),
            "cap_not_baked_layers": sum(layer.cap in ("image", "embedded")
                                        for layer in baked.layers),
        }),
    }


def save_lora(path: str, baked: BakedLoRA, metadata: dict[str, str]) -> None:
    """Write atomically (unhype/files.py), like the network files."""
    save_atomically(path, baked.tensors, metadata)
