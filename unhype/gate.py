"""The gate on the activation readout: a prompt that does not trigger the network gets no LoRA
at all (its rows get no hooks), so its image is bit-identical to the base model's.

The threshold is a raw LoRA norm (unhype/hypernet.py `lora_norm`), chosen once at the end of
training from the norms of the erase prompts and of the retain prompts (`choose_threshold`) and
stored in the network file; `triggers` is the check at inference. A network without a threshold
(files saved before the gate, untrained networks) gives every prompt its LoRA, as before.

The rule, measured on the proving ground (benchmarks/bench_gate.py, README "UnHype
Conditioner"): the threshold sits halfway between the strongest retain prompt and the weakest
erase prompt on a log scale, since norms of prompts never seen in training (held-out synonyms
and paraphrases, other everyday prompts) spread around the measured ones by factors, not by
amounts; and never above CEILING times the weakest erase prompt, where a LoRA is too weak to
erase anything (the erase prompts' own LoRA at strength CEILING leaves their colour as the base
model paints it), so a network whose retain and erase prompts overlap cuts only LoRAs that would
not have erased.
"""

import math

import torch

#: Highest threshold, as a fraction of the weakest erase prompt's LoRA norm.
CEILING = 0.1


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
    return min(math.sqrt(strongest_retain * weakest_erase), CEILING * weakest_erase)


def triggers(norms: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Which prompts (LoRA norms [rows]) get a LoRA: those above the threshold, every prompt
    without one."""
    if threshold is None:
        return torch.ones(norms.shape, dtype=torch.bool, device=norms.device)
    return norms > threshold
