"""UnHype Conditioner and UnHype Text Encode: each prompt's UnHype embedding into its conditioning.

The embedding travels in the cond dict's `model_conds` (the only way extra data reaches the
model call), as `[1, 1 + D]` = `[flag 1.0, pooled...]`. The cond tensor and `pooled_output` are
left as they are, so the base model sees exactly what it would without UnHype. An entry whose
tokens come from several texts (the chunks of a long prompt, a Conditioning (Concat)) gets the
embedding of its most strongly triggering part (nodes/parts.py); `PartsAtSampling` redoes that
when a node between the Conditioner and the sampler changed the tokens.
"""

import logging

import comfy.conds
import torch
from comfy_api.latest import io

from ..unhype.families import family, pooled_name
from ..unhype.trigger import cond_pooled
from .parts import MEMORY, Part, split
from .schema import CATEGORY, ERASURE, UnHype
from .wire import EMBEDDING_KEY, base_model_row, pack_embedding

RESOLVED_FOR = "unhype_resolved_for"  # cond dict key: the tensor the packed embedding was read from
UNSEEN = (
    "the tokens marked NOT SEEN reach the model but not the UnHype network, so a "
    "concept in them is not erased: they are the chunks after the first of a long prompt, or "
    "text joined by Conditioning (Concat), that no UnHype node encoded. Encode that text with "
    "UnHype Text Encode, or put an UnHype Conditioner on it before it is joined."
)


def in_clip_chunks(network) -> bool:
    """Is the cond tensor of the network's family CLIP output in chunks?"""
    return family(network.info.base_arch).chunked_clip_cond


def check_pooled(node: str, network, pooled, index: int) -> torch.Tensor:
    if pooled is None:
        raise ValueError(
            f"{node}: conditioning entry {index + 1} has no pooled_output, which this network "
            f"({network.info.base_arch}, trigger clip-pooled) reads. Connect the output of a CLIP "
            "text encoder (CLIP Text Encode, or UnHype Text Encode), not a conditioning that "
            "lost its pooled vector. A text encoder without one (umT5 of Wan, the LLMs of "
            "Flux.2 Klein and others) needs a network with the cond-pooled trigger, which reads "
            "the conditioning itself."
        )
    pooled = pooled.reshape(pooled.shape[0], -1) if pooled.ndim > 1 else pooled.reshape(1, -1)
    width, expected = pooled.shape[-1], network.config.embed_dim
    if width != expected:
        raise ValueError(
            f"{node}: this network was made for {expected}-d {pooled_name(expected)} "
            f"({network.info.base_arch}, {network.info.embedding_source}) but the conditioning "
            f"carries {width}-d {pooled_name(width)}: use an UnHype network made for this "
            "model family, or the text encoder of the model the network was made for."
        )
    return pooled[:1]


def cond_trigger(node: str, network, cond, index: int) -> torch.Tensor:
    """A "cond-pooled" network's trigger vector [1, D] for an entry's cond tensor [1, T, C]."""
    width = network.config.embed_dim // 2
    if cond is None or cond.ndim != 3 or cond.shape[-1] != width:
        got = "no cond tensor" if cond is None else f"a cond tensor of shape {list(cond.shape)}"
        raise ValueError(
            f"{node}: this network reads the {width}-wide text conditioning of the model it was "
            f"made for ({network.info.base_arch}, {network.info.embedding_source}), but "
            f"conditioning entry {index + 1} has {got}: use an UnHype network made for this "
            "model family and its text encoder.")
    try:
        return cond_pooled([cond[0]], network.config.trigger_skip)
    except ValueError as error:
        raise ValueError(f"{node}: conditioning entry {index + 1}: {error}") from None


def zeroed_out(network, cond) -> bool:
    """Is this an entry a cond-pooled network cannot read, because every row after the shared
    ones is zero (ConditioningZeroOut, the usual negative of distilled models)? It holds no
    prompt, so it runs the base model."""
    if network.config.trigger != "cond-pooled" or cond is None or cond.ndim != 3:
        return False
    return not bool(cond[0, network.config.trigger_skip:].ne(0).any())


ZEROED = "all zero (ConditioningZeroOut): no prompt to read, runs the base model"


def entry_parts(node: str, network, cond, pooled, index: int) -> list[Part]:
    """The entry's parts with checked pooled vectors; its own pooled vector is remembered for
    its first block, so a later Concat that appends this entry can find it again. A
    "cond-pooled" network reads every token at once: one part."""
    if network.config.trigger == "cond-pooled":
        trigger = cond_trigger(node, network, cond, index)
        return [Part(0, cond.shape[1], trigger)]
    pooled = check_pooled(node, network, pooled, index)
    parts = split(cond, pooled, chunked=in_clip_chunks(network))
    if parts[0].pooled is pooled and parts[0].end > parts[0].start:
        MEMORY.remember(cond[0, parts[0].start:parts[0].end], pooled)
    for part in parts:
        if part.pooled is not None:
            part.pooled = check_pooled(node, network, part.pooled, index)
    return parts


Readout = tuple[float, bool]  # (activation, passes the gate), from UnHypeNetwork.readout


def strongest(network, entries: list[list[Part]]) -> list[tuple[int, list[Readout | None]]]:
    """For each entry, the index of its most strongly triggering part and every part's readout
    (None for a part not seen), from one pass of the network."""
    seen = [p.pooled for parts in entries for p in parts if p.pooled is not None]
    activation, triggered = network.readout(torch.cat(seen)) if seen else (torch.zeros(0),) * 2
    values = iter(zip(activation.tolist(), triggered.tolist()))
    out = []
    for parts in entries:
        scores = [next(values) if p.pooled is not None else None for p in parts]
        best = max((i for i, v in enumerate(scores) if v is not None), key=lambda i: scores[i][0])
        out.append((best, scores))
    return out


def with_embedding(entry: list, packed: torch.Tensor) -> list:
    """A copy of one [tensor, dict] entry whose model_conds carry `packed` (unhype/wire.py)."""
    options = dict(entry[1])
    options["model_conds"] = {
        **options.get("model_conds", {}),
        EMBEDDING_KEY: comfy.conds.CONDRegular(packed),
    }
    options[RESOLVED_FOR] = entry[0]
    return [entry[0], options]


UNTOUCHED = "untouched: identical to the base model"


def describe(readout: Readout, network) -> str:
    value, triggered = readout
    if network.info.activation_reference:
        level = f"activation {value:.2f}"
    else:
        level = f"raw LoRA norm {value:.3g} (the network has no activation reference)"
    if network.info.gate_threshold is None:
        return level
    return f"{level}, {'gets a LoRA' if triggered else UNTOUCHED}"


def header(network) -> str:
    info = network.info
    if info.gate_threshold is None:
        gate = ("no gate: every prompt gets its LoRA, however weak (a network saved before "
                "UnHype had the gate: retrain it to get one)")
    elif info.activation_reference:
        gate = (f"prompts at activation {info.gate_threshold / info.activation_reference:.2g} "
                "or under get no LoRA")
    else:
        gate = f"prompts at raw LoRA norm {info.gate_threshold:.3g} or under get no LoRA"
    return f"{info.title} [{info.base_arch}, {info.target_preset}]; {gate}"


def entry_lines(label: str, network, parts: list[Part], best: int, scores) -> list[str]:
    if len(parts) == 1:
        return [f"{label}: {describe(scores[0], network)}"]
    unit = "chunk" if in_clip_chunks(network) else "part"
    lines = [f"{label}: {len(parts)} {unit}s, {parts[-1].end} tokens; the most strongly "
             "triggering one decides the LoRA"]
    for k, (part, value) in enumerate(zip(parts, scores)):
        where = f"  {unit} {k + 1} of {len(parts)} (tokens {part.start + 1}-{part.end})"
        if value is None:
            lines.append(f"{where}: NOT SEEN")
        else:
            lines.append(f"{where}: {describe(value, network)}{'  <- used' if k == best else ''}")
    return lines


def condition(node: str, network, conditioning, label=None) -> tuple[list, str]:
    """Conditioning with every entry's embedding packed, and the report."""
    zeroed = [zeroed_out(network, e[0]) for e in conditioning]
    entries = [entry_parts(node, network, e[0], e[1].get("pooled_output"), i)
               for i, e in enumerate(conditioning) if not zeroed[i]]
    chosen = iter(zip(entries, strongest(network, entries)))
    out, lines = [], [header(network)]
    for i, entry in enumerate(conditioning):
        name = label or f"entry {i + 1}"
        if zeroed[i]:
            out.append(with_embedding(entry, base_model_row(network.config.embed_dim)))
            lines.append(f"{name}: {ZEROED}")
            continue
        parts, (best, scores) = next(chosen)
        out.append(with_embedding(entry, pack_embedding(parts[best].pooled)))
        lines += entry_lines(name, network, parts, best, scores)
    if any(p.pooled is None for parts in entries for p in parts):
        lines.append(f"WARNING: {UNSEEN}")
        logging.warning("%s: %s", node, UNSEEN)
    return out, "\n".join(lines)


class PartsAtSampling:
    """SAMPLER_SAMPLE wrapper: an entry whose tokens changed after UnHype Conditioner (e.g.
    Conditioner, then Conditioning (Concat), which keeps only the first part's dict) gets the
    embedding of its most strongly triggering part, as if the Conditioner had come last. Works on
    the guider's own copies of the conds, made for this sampling run."""

    def __init__(self, network):
        self.network = network

    def __deepcopy__(self, memo):
        """Deep copies of a ModelPatcher's options share it: it holds nothing mutable."""
        return self

    def __call__(self, executor, guider, *args, **kwargs):
        for conds in (guider.conds or {}).values():
            for c in conds:
                self.refresh(c)
        return executor(guider, *args, **kwargs)

    def refresh(self, c: dict) -> None:
        packed = (c.get("model_conds") or {}).get(EMBEDDING_KEY)
        tokens = c.get("cross_attn")
        if packed is None or tokens is None or c.get(RESOLVED_FOR) is tokens:
            return
        if float(packed.cond[0, 0]) < 0.5:  # flag off: this entry runs the base model
            return
        c[RESOLVED_FOR] = tokens
        if zeroed_out(self.network, tokens):  # zeroed after the Conditioner: the base model
            packed = comfy.conds.CONDRegular(base_model_row(self.network.config.embed_dim))
            c["model_conds"] = {**c["model_conds"], EMBEDDING_KEY: packed}
            return
        node = "Apply Dynamic LoRA"
        parts = entry_parts(node, self.network, tokens, c.get("pooled_output"), 0)
        best, _ = strongest(self.network, [parts])[0]
        packed = comfy.conds.CONDRegular(pack_embedding(parts[best].pooled))
        c["model_conds"] = {**c["model_conds"], EMBEDDING_KEY: packed}
        unseen = [f"{p.start + 1}-{p.end}" for p in parts if p.pooled is None]
        if unseen:
            logging.warning(
                "%s: a conditioning entry changed after UnHype Conditioner (e.g. by Conditioning "
                "(Concat)); its tokens %s were NOT SEEN by the network, so a concept in them is "
                "not erased. Encode that text with UnHype Text Encode, or put an UnHype "
                "Conditioner on it before it is joined.", node, ", ".join(unseen))


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
