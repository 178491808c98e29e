"""UnHype Conditioner and UnHype Text Encode: each prompt's UnHype embedding into its conditioning.

The embedding travels in the cond dict's `model_conds` (the only way extra data reaches the
model call), as `[1, 1 + D]` = `[flag 1.0, pooled...]`. The cond tensor and `pooled_output` are
left as they are, so the base model sees exactly what it would without UnHype.
"""

import comfy.conds
import torch

from .dynamic_lora import EMBEDDING_KEY, pack_embedding

CHUNK = 77  # CLIP context: ComfyUI encodes longer prompts in 77-token chunks
POOLED_NAMES = {
    768: "CLIP-L pooled embeddings (SD1.x / Flux)",
    1024: "OpenCLIP-H pooled embeddings (SD2.x)",
    1280: "CLIP-G pooled embeddings (SDXL)",
    2048: "CLIP-L+G pooled embeddings (SD3)",
}
CLIP_CONDS = {"sd1", "sd2", "sdxl"}  # families whose cond tensor is CLIP output in 77-token chunks


def _pooled_name(width: int) -> str:
    return POOLED_NAMES.get(width, "pooled embeddings")


def check_pooled(node: str, network, pooled, index: int) -> torch.Tensor:
    if pooled is None:
        raise ValueError(
            f"{node}: conditioning entry {index + 1} has no pooled_output, which UnHype reads. "
            "Connect the output of a CLIP text encoder (CLIP Text Encode, or UnHype Text Encode), "
            "not a conditioning that lost its pooled vector."
        )
    pooled = pooled.reshape(pooled.shape[0], -1) if pooled.ndim > 1 else pooled.reshape(1, -1)
    width, expected = pooled.shape[-1], network.config.embed_dim
    if width != expected:
        raise ValueError(
            f"{node}: this network was made for {expected}-d {_pooled_name(expected)} "
            f"({network.info.base_arch}, {network.info.embedding_source}) but the conditioning "
            f"carries {width}-d {_pooled_name(width)}: use an UnHype network made for this "
            "model family, or the text encoder of the model the network was made for."
        )
    return pooled[:1]


def with_embedding(entry: list, pooled: torch.Tensor) -> list:
    """A copy of one [tensor, dict] entry whose model_conds carry the packed embedding."""
    options = dict(entry[1])
    options["model_conds"] = {
        **options.get("model_conds", {}),
        EMBEDDING_KEY: comfy.conds.CONDRegular(pack_embedding(pooled)),
    }
    return [entry[0], options]


def describe(value: float, network) -> str:
    if network.info.activation_reference:
        return f"activation {value:.2f}"
    return f"raw LoRA norm {value:.3g} (the network has no activation reference)"


def header(network) -> str:
    info = network.info
    return f"{info.title} [{info.base_arch}, {info.target_preset}]"


class UnHypeConditioner:
    DESCRIPTION = (
        "Attaches each prompt's UnHype embedding to its conditioning, so Apply Dynamic LoRA can "
        "give every prompt its own LoRA. Use it on the positive AND the negative. The report "
        "shows how strongly each entry triggers the network (0..1)."
    )
    CATEGORY = "UnHype"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "report")
    OUTPUT_NODE = False
    FUNCTION = "condition"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "unhype": ("UNHYPE",),
            }
        }

    def condition(self, conditioning, unhype):
        node = "UnHype Conditioner"
        pooled = [check_pooled(node, unhype, e[1].get("pooled_output"), i)
                  for i, e in enumerate(conditioning)]
        out = [with_embedding(e, p) for e, p in zip(conditioning, pooled)]
        activations = unhype.activation(torch.cat(pooled)).tolist() if pooled else []
        lines = [header(unhype)]
        for i, (entry, value) in enumerate(zip(conditioning, activations)):
            line = f"entry {i + 1}: {describe(value, unhype)}"
            cond = entry[0]
            if (unhype.info.base_arch in CLIP_CONDS and cond is not None and cond.ndim == 3
                    and cond.shape[1] > CHUNK):
                line += (f"; long prompt ({cond.shape[1] // CHUNK} chunks of 77 tokens): only "
                         "the first chunk was seen, use UnHype Text Encode to check them all")
            lines.append(line)
        report = "\n".join(lines)
        return {"ui": {"text": [report]}, "result": (out, report)}


def pooled_source_key(tokens: dict) -> str:
    """The tokenizer key whose first chunk feeds ComfyUI's pooled vector."""
    if "g" in tokens:  # SDXL: pooled_output is CLIP-G's
        return "g"
    if "l" in tokens:  # SD1.x, Flux: CLIP-L
        return "l"
    raise ValueError(
        "UnHype Text Encode: this text encoder has no CLIP-L or CLIP-G tokenizer "
        f"(its keys are {sorted(tokens)}): UnHype reads CLIP pooled embeddings"
    )


def chunk_pooled(clip, tokens: dict, key: str) -> torch.Tensor:
    """Pooled vector of every 77-token chunk of tokens[key], each encoded alone: [chunks, D]."""
    chunks = tokens[key]
    if len(chunks) == 1:
        return None
    filler = clip.tokenize("")  # the other encoders' output is discarded: keep them cheap
    pooled = []
    for chunk in chunks:
        alone = {k: ([chunk] if k == key else v) for k, v in filler.items()}
        _, vector = clip.encode_from_tokens(alone, return_pooled=True)
        pooled.append(vector.reshape(1, -1).float().cpu())
    return torch.cat(pooled)


class UnHypeTextEncode:
    DESCRIPTION = (
        "CLIP Text Encode that also attaches the UnHype embedding, reading every 77-token chunk "
        "of a long prompt: the most strongly triggering chunk decides the LoRA, so a concept "
        "placed late in a long prompt is still caught."
    )
    CATEGORY = "UnHype"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "report")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP",),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
                "unhype": ("UNHYPE",),
            }
        }

    def encode(self, clip, text, unhype):
        node = "UnHype Text Encode"
        if clip is None:
            raise RuntimeError(
                f"{node}: the clip input is invalid: the checkpoint may have no text encoder"
            )
        tokens = clip.tokenize(text)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        key = pooled_source_key(tokens)
        chunks = chunk_pooled(clip, tokens, key)
        lines = [header(unhype)]
        if chunks is None:  # one chunk: the ordinary pooled vector already saw the whole prompt
            pooled = [check_pooled(node, unhype, e[1].get("pooled_output"), i)
                      for i, e in enumerate(conditioning)]
            value = unhype.activation(pooled[0]).item()
            lines.append(f"prompt (1 chunk): {describe(value, unhype)}")
        else:
            check_pooled(node, unhype, chunks[:1], 0)
            values = unhype.activation(chunks)
            best = int(values.argmax())
            pooled = [chunks[best : best + 1]] * len(conditioning)
            for k, value in enumerate(values.tolist()):
                mark = "  <- used" if k == best else ""
                lines.append(f"chunk {k + 1} of {len(values)}: {describe(value, unhype)}{mark}")
        out = [with_embedding(e, p) for e, p in zip(conditioning, pooled)]
        report = "\n".join(lines)
        return {"ui": {"text": [report]}, "result": (out, report)}
