"""Sampling-time glue: the APPLY_MODEL wrapper that gives every batch row its own UnHype LoRA.

The Conditioner packs each conditioning entry's pooled embedding (nodes/sampling/wire.py) into the
conditioning's `model_conds`. ComfyUI repeats it to the entry's rows, concatenates it row-aligned
with x when it batches conds (positive and negative together) and hands it to APPLY_MODEL
wrappers as a keyword argument. The wrapper turns each distinct embedding into LoRA factors
once (LRU cache), selects the rows that get a LoRA (the mode's rows whose prompt passes the
network's gate, unhype/gate.py) and runs the model inside `row_lora`, whose forward hooks are
removed when the call returns or raises; with no such row it adds no hook at all.
"""

import torch

from ...unhype import row_lora
from ...unhype.factors import FactorCache
from .wire import EMBEDDING_KEY, flagged, vectors

WRAPPER_KEY = "unhype"
MODES = ("conditional only", "all rows")
UNCOND = 1  # value of transformer_options["cond_or_uncond"] for the negative chunk (plain CFG)
POSITIVE_UUIDS = "unhype_positive_uuids"  # transformer_options key set by mark_positive
NEGATIVE_UUIDS = "unhype_negative_uuids"


def conditional_chunks(transformer_options: dict) -> list[bool] | None:
    """Which chunks of this model call carry the guider's positive conditioning.

    The guider's own "positive" / "negative" lists (by cond uuid, recorded by mark_positive) decide
    where they are known: guiders order chunks differently (DualCFG passes [negative, middle,
    positive]; Self-Attention Guidance runs the negative alone as chunk 0). ComfyUI gives a
    negative area-copy of a positive area cond the positive's uuid: such shared uuids, and chunks
    of unknown origin, fall back to plain CFG's convention (cond_or_uncond 1 = negative).
    """
    order = transformer_options.get("cond_or_uncond")
    if not order:
        return None
    uuids = transformer_options.get("uuids") or [None] * len(order)
    positive = transformer_options.get(POSITIVE_UUIDS, frozenset())
    negative = transformer_options.get(NEGATIVE_UUIDS, frozenset())
    chunks = []
    for index, uuid in zip(order, uuids):
        if uuid in positive and uuid not in negative:
            chunks.append(True)
        elif uuid in negative and uuid not in positive:
            chunks.append(False)
        else:
            chunks.append(index != UNCOND)
    return chunks


def select_rows(embedding: torch.Tensor, mode: str, transformer_options: dict) -> torch.Tensor:
    """Rows that get a LoRA: flagged rows, minus the non-positive chunks in "conditional only"."""
    selected = flagged(embedding)
    chunks = conditional_chunks(transformer_options) if mode == "conditional only" else None
    if chunks:
        rows = embedding.shape[0]
        if rows % len(chunks):
            raise RuntimeError(
                f"UnHype: a batch of {rows} rows cannot be split into the {len(chunks)} chunks "
                f"ComfyUI announced ({transformer_options.get('cond_or_uncond')})"
            )
        keep = torch.tensor(chunks, device=selected.device)
        selected = selected & keep.repeat_interleave(rows // len(chunks))
    return selected.nonzero().flatten().cpu()


def mark_positive(executor, x, timestep, model_options=None, seed=None):
    """PREDICT_NOISE wrapper: tell the APPLY_MODEL wrapper which conds are the guider's positive
    and negative ones, through a copy of model_options (nothing shared is modified)."""
    conds = getattr(executor.class_obj, "conds", None) or {}

    def uuids(key):
        return frozenset(c["uuid"] for c in conds.get(key) or [] if c and "uuid" in c)

    options = dict(model_options or {})
    transformer = dict(options.get("transformer_options", {}))
    transformer[POSITIVE_UUIDS], transformer[NEGATIVE_UUIDS] = uuids("positive"), uuids("negative")
    options["transformer_options"] = transformer
    return executor(x, timestep, options, seed)


class DynamicLoRA:
    """State behind one Apply Dynamic LoRA node: network, strength, mode and its factor cache
    (unhype/factors.py: CPU LRU per prompt, stacked factors on the device until `release`,
    called by ComfyUI's cleanup at the end of a run).

    The hypernetwork runs where ComfyUI's memory manager put the shared module (Apply Dynamic
    LoRA registers it as an additional model of the MODEL): on the GPU when it was loaded there,
    on the offload device when ComfyUI had no room for it; nothing here copies or moves it.
    Safe to share between ModelPatcher clones and threads (multi-GPU runs clones in threads):
    the cache is locked and the shared UnHypeNetwork is never modified.
    """

    def __init__(self, network, strength: float, mode: str, cache_bytes: int = 64 * 2**20,
                 device_layouts: int = 4):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.network, self.strength, self.mode = network, float(strength), mode
        self.cache = FactorCache(network, cache_bytes, device_layouts)

    def __deepcopy__(self, memo):
        """Deep copies of a ModelPatcher's options share this state: it is thread-safe, never
        mutated from outside, and a Lock cannot be copied."""
        return self

    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                 transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        embedding = kwargs.get(EMBEDDING_KEY)
        if embedding is None or self.strength == 0.0:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        config = self.network.config
        if embedding.ndim != 2 or embedding.shape[1] != config.embed_dim + 1:
            raise RuntimeError(
                f"UnHype: the conditioning carries {embedding.shape[-1] - 1}-d embeddings but the "
                f"network given to Apply Dynamic LoRA reads {config.embed_dim}-d ones: use the "
                "same kind of network in UnHype Conditioner and Apply Dynamic LoRA"
            )
        if embedding.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"UnHype: {embedding.shape[0]} embedding rows for a batch of {x.shape[0]} rows"
            )
        rows = select_rows(embedding, self.mode, transformer_options)
        base_model = executor.class_obj
        if rows.numel():
            dtype = base_model.get_dtype_inference() \
                if hasattr(base_model, "get_dtype_inference") else x.dtype
            kept, factors = self.cache.select(vectors(embedding[rows.to(embedding.device)]),
                                              x.device, dtype)
            rows = rows[kept]  # the gate: rows whose prompt does not trigger get no LoRA at all
        if rows.numel() == 0:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        with row_lora(base_model.diffusion_model, self.network.targets, factors, rows=rows,
                      scale=self.strength, norm_cap=config.norm_cap):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
