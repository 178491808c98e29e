"""Reading a conditioning the way UnHype's nodes do: each entry's parts (the chunks of a long
prompt, Concat parts; nodes/sampling/parts.py), their trigger vectors checked against the network,
the most strongly triggering part, and the report lines. The Conditioner runs it once; at
sampling, nodes/sampling/refresh.py runs it again on an entry whose tokens changed after it.
"""

import logging

import torch

from ...unhype.families import family, pooled_name
from ...unhype.trigger import cond_pooled
from .parts import MEMORY, Part, split
from .wire import base_model_row, carrying, pack_embedding

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
    """A copy of one [tensor, dict] entry whose model_conds carry `packed` (nodes/sampling/
    wire.py), marked as read from its tensor."""
    return [entry[0], {**carrying(entry[1], packed), RESOLVED_FOR: entry[0]}]


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
