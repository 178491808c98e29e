"""What the hypernetwork reads of a prompt: its trigger vector.

"clip-pooled" (the paper): CLIP's pooled vector, on families whose text path has a CLIP.
"cond-pooled": pooled from the conditioning the diffusion model itself reads, so it works on
any family (LLM and T5 encoders have no pooled vector): the mean and the maximum of its rows
after the leading rows every prompt shares (start token, template prefix), side by side. It sees
every chunk and every Concat part, where CLIP's pooled vector holds the first chunk's. The
maximum keeps a single concept token from being averaged away (proving ground, erase red, seeds
0 and 2: H_o 99.4 and 95.1 with it, 94.7 and 95.4 with the last row in its place).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TRIGGERS = ("clip-pooled", "cond-pooled")


def cond_pooled(conditioning: Sequence[torch.Tensor], skip: int) -> torch.Tensor:
    """[rows_i, D] per prompt -> [prompts, 2D] float32: mean and max of the rows after `skip`,
    trailing all-zero rows left out: padding, not prompt (umT5 pads Wan's prompts to 512 rows of
    zeros, which would dilute the mean and hold the max at 0 or above)."""
    vectors = []
    for cond in conditioning:
        if cond.ndim != 2 or cond.shape[0] <= skip:
            raise ValueError(f"conditioning of shape {list(cond.shape)} has no rows after the "
                             f"{skip} every prompt shares")
        rows = cond[skip:].float()
        nonzero = rows.ne(0).any(1).nonzero()
        if nonzero.numel() == 0:
            raise ValueError(
                f"conditioning of shape {list(cond.shape)} is all zero after the {skip} rows "
                "every prompt shares: there is no prompt in it to read. A zeroed-out "
                "conditioning (ConditioningZeroOut) goes to the sampler without an UnHype "
                "node, and runs the base model there")
        rows = rows[:int(nonzero[-1]) + 1]
        vectors.append(torch.cat([rows.mean(0), rows.amax(0)]))
    return torch.stack(vectors)


#: how far apart (relative L2) two prompts' states of one row may be and still be the same row:
#: a causal encoder gives the same leading tokens the same states, but prompts of other lengths
#: may take other kernels, which round them apart (Z-Image's Qwen3 template prefix: 1e-6 in
#: float32); a row of another token differs by the order of the row itself
SAME_ROW = 1e-2


def shared_rows(conditioning: Sequence[torch.Tensor]) -> int:
    """How many leading rows are the same, up to float noise (`SAME_ROW`), in every one of these
    conditionings (at least two unlike prompts): the rows that say nothing about a prompt."""
    length = min(c.shape[0] for c in conditioning)
    first = conditioning[0].float()
    for row in range(length):
        limit = SAME_ROW * float(first[row].norm())
        if not all(float((c[row].float() - first[row]).norm()) <= limit
                   for c in conditioning[1:]):
            return row
    return length - 1  # every row alike: keep the last one to pool


def read_trigger(denoiser, prompts: Sequence[str], trigger: str, skip: int) -> torch.Tensor:
    """The trigger vectors [prompts, D] of a Denoiser (unhype/denoiser.py) for a network's
    `trigger` kind and `skip` (HyperNetConfig.trigger, .trigger_skip)."""
    if trigger == "clip-pooled":
        return denoiser.embed(prompts)
    if trigger == "cond-pooled":
        return cond_pooled(denoiser.text_states(prompts), skip)
    raise ValueError(f"trigger must be one of {TRIGGERS}, got {trigger!r}")


#: prompts unlike each other, to find the rows every prompt shares (`shared_rows`)
PROBE_PROMPTS = ("a photo", "red", "an image of a dog on a beach, at night")


@dataclass(frozen=True)
class TriggerSpec:
    """A trigger kind as one model's text path gives it: its width and the rows it skips."""

    kind: str
    width: int
    skip: int = 0


def measure_trigger(denoiser, kind: str) -> TriggerSpec:
    """The TriggerSpec of `kind` for a Denoiser, from a few unlike prompts."""
    if kind == "clip-pooled":
        # not the empty prompt: a denoiser that caches encodings (the proving ground's) would
        # then encode the CFG prompt alone, and its float noise differs from a batch's
        return TriggerSpec(kind, int(denoiser.embed(PROBE_PROMPTS[:1]).shape[1]))
    conditioning = denoiser.text_states(PROBE_PROMPTS)
    skip = shared_rows(conditioning)
    return TriggerSpec(kind, int(read_trigger(denoiser, PROBE_PROMPTS[:1], kind, skip).shape[1]),
                       skip)
