"""How a prompt's pooled embedding travels from UnHype Conditioner to Apply Dynamic LoRA: the one
place that packs and reads it.

ComfyUI passes extra per-row data to the model call only through a conditioning entry's
`model_conds`: the entry's `[1, 1 + D]` row (a 1.0 flag, then the pooled vector) is repeated to
the entry's batch rows, concatenated row-aligned with the latent and handed to APPLY_MODEL
wrappers as the keyword argument EMBEDDING_KEY.
"""

import comfy.conds
import torch

EMBEDDING_KEY = "unhype_embedding"


def pack_embedding(pooled: torch.Tensor) -> torch.Tensor:
    """[1, D] pooled vector -> [1, 1 + D] float32 row: a 1.0 flag, then the vector."""
    pooled = pooled.detach().reshape(1, -1).to("cpu", torch.float32)
    return torch.cat([torch.ones(1, 1), pooled], dim=1)


def base_model_row(width: int) -> torch.Tensor:
    """[1, 1 + width] zeros: the flag off, so the entry's rows run the base model."""
    return torch.zeros(1, 1 + width)


def carrying(options: dict, row: torch.Tensor) -> dict:
    """A copy of a cond dict whose model_conds carry `row` (its other model_conds kept)."""
    return {**options, "model_conds": {**(options.get("model_conds") or {}),
                                       EMBEDDING_KEY: comfy.conds.CONDRegular(row)}}


def packed_row(options: dict) -> torch.Tensor | None:
    """The [1, 1 + D] row a cond dict carries, or None."""
    packed = (options.get("model_conds") or {}).get(EMBEDDING_KEY)
    return None if packed is None else packed.cond


def flagged(rows: torch.Tensor) -> torch.Tensor:
    """[rows, 1 + D] -> bool [rows]: which rows may get a LoRA (flag on)."""
    return rows[:, 0].float() > 0.5


def vectors(rows: torch.Tensor) -> torch.Tensor:
    """[rows, 1 + D] -> [rows, D]: the embeddings without their flag."""
    return rows[:, 1:]
