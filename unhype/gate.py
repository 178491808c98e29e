"""The gate on the activation readout: a prompt that does not trigger the network gets no LoRA
at all (its rows get no hooks), so its image is bit-identical to the base model's.

The threshold is a raw LoRA norm (unhype/hypernet.py `lora_norm`), chosen once at the end of
training from the norms of the erase prompts and of the retain prompts (`choose_threshold`) and
stored in the network file; `triggers` is the check at inference. A network without a threshold
(files saved before the gate, untrained networks) gives every prompt its LoRA, as before.

The rule: halfway between the strongest retain prompt and the weakest erase prompt on a log
scale, since prompts never seen in training spread around the measured ones by factors. On the
proving ground (erase red, benchmarks/bench_gate.py), kept prompts in unseen wordings (other
synonyms, paraphrase templates, shape-only prompts) reached 1.2x the strongest retain prompt,
unseen wordings of red down to 0.72x the weakest erase prompt, and the two measured sets were a
factor 12.5 (built-in retain list kept) to 1,540 apart: the midpoint leaves each side a margin
of 3.5x or more. It never goes above ERASE_SIDE times the weakest erase prompt, so close or
overlapping sets still give every erase prompt and its weaker wordings their LoRA: even at 5%
strength the erase LoRA still erased 57% of red, so a gate errs towards the erase side.
"""

import math

import torch

#: Highest threshold, as a fraction of the weakest erase prompt's LoRA norm.
ERASE_SIDE = 0.5


def choose_threshold(erase_norms: torch.Tensor, retain_norms: torch.Tensor) -> float | None:
    """The gate's threshold from the LoRA norms of the erase and retain prompts at training end;
    None (no gate) without both, since then nothing says where untouched prompts lie."""
    erase_norms, retain_norms = torch.as_tensor(erase_norms), torch.as_tensor(retain_norms)
    if erase_norms.numel() == 0 or retain_norms.numel() == 0:
        return None
    weakest_erase = float(erase_norms.min())
    strongest_retain = float(retain_norms.max())
    for name, value in (("erase", weakest_erase), ("retain", strongest_retain)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"the {name} prompts' LoRA norms must be finite and >= 0, got {value}")
    return min(math.sqrt(strongest_retain * weakest_erase), ERASE_SIDE * weakest_erase)


def triggers(norms: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Which prompts (LoRA norms [rows]) get a LoRA: those above the threshold, every prompt
    without one."""
    if threshold is None:
        return torch.ones(norms.shape, dtype=torch.bool, device=norms.device)
    return norms > threshold
