"""Per-row dynamic LoRA: y_b = W x_b + scale_b · up_b down_b x_b, with no weight touched.

The math (`row_lora_delta`) is separate from the injection (`row_lora`), which attaches forward
hooks for the duration of a `with` block and always removes them, also when the forward raises.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .hypernet import Factors, RowFactors
from .targets import Target, resolve_targets


def row_lora_delta(
    x: torch.Tensor, factors: RowFactors, scale: torch.Tensor, norm_cap: float | None = None
) -> torch.Tensor:
    """LoRA output for each row of x [rows, ..., in] with that row's own factors.

    `scale` is [rows]. With `norm_cap`, each row's output is shrunk to at most that Frobenius
    norm (the paper's per-sample clip), measured in float32 over one copy of the row's tokens
    (see `token_copies`), so the cap depends on the row's own prompt only.
    """
    rows = x.shape[0]
    flat = x.reshape(rows, -1, x.shape[-1])
    down = factors.down.to(x.device, x.dtype)
    up = factors.up.to(x.device, x.dtype)
    delta = torch.bmm(torch.bmm(flat, down.transpose(1, 2)), up.transpose(1, 2))
    gain = scale.to(x.device, torch.float32)
    if norm_cap is not None:
        norms = delta.float().flatten(1).norm(dim=1) * gain.abs()
        over = norms > norm_cap
        if over.any():  # only a row over the cap can have repeats that matter
            copies = torch.ones_like(norms)
            copies[over] = token_copies(flat[over])
            norms = norms / copies.sqrt()
        gain = gain * (norm_cap / norms.clamp_min(1e-12)).clamp(max=1.0)
    delta = delta * gain.to(x.dtype)[:, None, None]
    return delta.reshape(*x.shape[:-1], delta.shape[-1])


def token_copies(flat: torch.Tensor) -> torch.Tensor:
    """How many identical copies of a shorter token sequence each row of flat [rows, T, in] is.

    ComfyUI batches a 77-token context with a 154-token one by repeating the shorter one; the
    attention output does not change, and with this count the norm cap does not either. The
    smallest period that divides T wins, which gives the same count for a row alone and repeated.
    """
    rows, tokens = flat.shape[:2]
    copies = torch.ones(rows, device=flat.device)
    for period in range(1, tokens // 2 + 1):
        if tokens % period == 0:
            repeats = (flat[:, period:] == flat[:, :-period]).flatten(1).all(dim=1)
            copies = torch.where((copies == 1) & repeats, float(tokens // period), copies)
    return copies


def _hook(target: Target, factors: RowFactors, rows: torch.Tensor | None, scale, norm_cap):
    def add_delta(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if rows is None:
            if x.shape[0] != factors.down.shape[0]:
                raise ValueError(
                    f"UnHype: {target.name} got a batch of {x.shape[0]} rows but factors for "
                    f"{factors.down.shape[0]}"
                )
            delta = row_lora_delta(x, factors, scale, norm_cap)
        else:
            if int(rows.max()) >= x.shape[0]:
                raise ValueError(
                    f"UnHype: {target.name} got a batch of {x.shape[0]} rows, LoRA rows go up to "
                    f"{int(rows.max())}"
                )
            delta = row_lora_delta(x[rows], factors, scale, norm_cap)
        if target.out_slice is not None:
            low, high = target.out_slice
            delta = F.pad(delta, (low, target.out_features - high))
        if rows is None:
            return output + delta.to(output.dtype)
        return output.index_add(0, rows.to(output.device), delta.to(output.dtype))

    return add_delta


@contextmanager
def row_lora(
    root: nn.Module,
    targets: Sequence[Target],
    factors: Factors,
    rows: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
    norm_cap: float | None = None,
) -> Iterator[None]:
    """Within the block, every target Linear under `root` adds its per-row LoRA.

    `factors[name]` holds one set per LoRA row; `rows` says which batch rows they belong to
    (None: all rows, in order). Rows not listed get exactly the base output. `scale` is a number
    or one value per LoRA row.
    """
    modules = resolve_targets(root, list(targets))
    count = next(iter(factors.values())).down.shape[0] if factors else 0
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.long).flatten()
        if rows.numel() != count:
            raise ValueError(f"{rows.numel()} LoRA rows named for factors of {count} rows")
        if count and (int(rows.min()) < 0 or rows.unique().numel() != count):
            raise ValueError(f"LoRA rows must be distinct batch rows >= 0, got {rows.tolist()}")
        if count == 0:
            yield
            return
    scale = torch.as_tensor(scale, dtype=torch.float32).expand(count)
    handles = []
    try:
        for target in targets:
            hook = _hook(target, factors[target.name], rows, scale, norm_cap)
            handles.append(modules[target.name].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
