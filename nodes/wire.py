"""How a prompt's pooled embedding travels from UnHype Conditioner to Apply Dynamic LoRA.

ComfyUI passes extra per-row data to the model call only through a conditioning entry's
`model_conds`: the entry's `[1, 1 + D]` row (a 1.0 flag, then the pooled vector) is repeated to
the entry's batch rows, concatenated row-aligned with the latent and handed to APPLY_MODEL
wrappers as the keyword argument EMBEDDING_KEY.
"""

import torch

EMBEDDING_KEY = "unhype_embedding"


def pack_embedding(pooled: torch.Tensor) -> torch.Tensor:
    """[1, D] pooled vector -> [1, 1 + D] float32 row: a 1.0 flag, then the vector."""
    pooled = pooled.detach().reshape(1, -1).to("cpu", torch.float32)
    return torch.cat([torch.ones(1, 1), pooled], dim=1)


def base_model_row(width: int) -> torch.Tensor:
    """[1, 1 + width] zeros: the flag off, so the entry's rows run the base model."""
    return torch.zeros(1, 1 + width)
