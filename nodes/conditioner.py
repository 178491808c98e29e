"""UnHype Conditioner and UnHype Text Encode: each prompt's UnHype embedding into its conditioning.

The embedding travels in the cond dict's `model_conds` (the only way extra data reaches the
model call), as `[1, 1 + D]` = `[flag 1.0, pooled...]`. The cond tensor and `pooled_output` are
left as they are, so the base model sees exactly what it would without UnHype. An entry whose
tokens come from several texts (the chunks of a long prompt, a Conditioning (Concat)) gets the
embedding of its most strongly triggering part (nodes/sampling/reading.py);
nodes/sampling/refresh.py redoes that when a node between the Conditioner and the sampler
changed the tokens.
"""

import torch
from comfy_api.latest import io

from .sampling.parts import MEMORY
from .sampling.reading import check_pooled, condition, in_clip_chunks
from .schema import CATEGORY, ERASURE, UnHype


class UnHypeConditioner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeConditioner",
            display_name="UnHype Conditioner",
            category=CATEGORY,
            description=(
                "Attaches each prompt's UnHype embedding to its conditioning, so Apply Dynamic "
                "LoRA can give every prompt its own LoRA. Use it on the positive AND the "
                "negative, after any Conditioning (Concat). The report shows how strongly each "
                "entry (and each part of a joined or long one) triggers the network (0..1), "
                "whether it is untouched (under the network's gate: identical to the base "
                "model) and warns about parts it cannot see."),
            search_aliases=[*ERASURE, "conditioning", "prompt embedding"],
            inputs=[io.Conditioning.Input("conditioning"), UnHype.Input("unhype")],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning",
                    tooltip="The same conditioning with each entry's UnHype embedding attached: "
                            "into the sampler's positive or negative."),
                io.String.Output(
                    display_name="report",
                    tooltip="How strongly each entry (and each part of a joined one) triggers "
                            "the network, 0..1; also shown on the node."),
            ],
        )

    @classmethod
    def execute(cls, conditioning, unhype) -> io.NodeOutput:
        out, report = condition("UnHype Conditioner", unhype, conditioning)
        return io.NodeOutput(out, report, ui={"text": [report]})


def pooled_source_key(tokens: dict) -> str:
    """The tokenizer key whose first chunk feeds ComfyUI's pooled vector."""
    if "g" in tokens:  # SDXL: pooled_output is CLIP-G's
        return "g"
    if "l" in tokens:  # SD1.x, Flux: CLIP-L
        return "l"
    raise ValueError(
        "UnHype Text Encode: this text encoder has no CLIP-L or CLIP-G tokenizer "
        f"(its keys are {sorted(tokens)}), and this network reads CLIP pooled embeddings "
        "(trigger clip-pooled): a model whose text encoder has no CLIP needs a network with the "
        "cond-pooled trigger"
    )


def chunk_pooled(clip, tokens: dict, key: str) -> torch.Tensor:
    """Pooled vector of every chunk of tokens[key], each encoded alone: [chunks, D]."""
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


def remember_chunks(network, cond: torch.Tensor, chunks: torch.Tensor, length: int) -> None:
    """Each `length`-token chunk of a CLIP cond (the tokenizer's chunk length) with its own pooled
    vector, so the chunks count as parts; tokens not laid out in those chunks (Flux's T5) count
    as one part, described by the most strongly triggering chunk."""
    if in_clip_chunks(network) and cond.shape[1] == length * len(chunks):
        for k in range(len(chunks)):
            MEMORY.remember(cond[0, k * length:(k + 1) * length], chunks[k:k + 1])
    else:
        best = int(network.activation(chunks).argmax())
        MEMORY.remember(cond[0], chunks[best:best + 1])


class UnHypeTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="UnHypeTextEncode",
            display_name="UnHype Text Encode",
            category=CATEGORY,
            description=(
                "CLIP Text Encode that also attaches the UnHype embedding, reading every chunk "
                "(77 tokens for standard CLIPs) of a long prompt: the most strongly triggering "
                "chunk decides the LoRA, so a concept placed late in a long prompt is still "
                "caught. Its chunks stay known when the output is joined to another prompt with "
                "Conditioning (Concat)."),
            search_aliases=[*ERASURE, "CLIP Text Encode", "text encode", "prompt", "long prompt"],
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("text", multiline=True, dynamic_prompts=True),
                UnHype.Input("unhype"),
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="conditioning",
                    tooltip="The prompt encoded as CLIP Text Encode does, with its UnHype "
                            "embedding attached."),
                io.String.Output(
                    display_name="report",
                    tooltip="How strongly each chunk triggers the network, 0..1; also "
                            "shown on the node."),
            ],
        )

    @classmethod
    def execute(cls, clip, text, unhype) -> io.NodeOutput:
        node = "UnHype Text Encode"
        if clip is None:
            raise RuntimeError(
                f"{node}: the clip input is invalid: the checkpoint may have no text encoder"
            )
        tokens = clip.tokenize(text)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        if unhype.config.trigger == "clip-pooled":  # cond-pooled reads every chunk itself
            key = pooled_source_key(tokens)
            chunks = chunk_pooled(clip, tokens, key)
            if chunks is not None:  # one chunk: the ordinary pooled vector saw all of it
                check_pooled(node, unhype, chunks[:1], 0)
                for entry in conditioning:
                    remember_chunks(unhype, entry[0], chunks, length=len(tokens[key][0]))
        out, report = condition(node, unhype, conditioning, label="prompt")
        return io.NodeOutput(out, report, ui={"text": [report]})
