"""The paper's losses, as the authors' training code optimises them (PAPER.md, "What the
authors' training code actually optimises"); `Trainer` (unhype/training.py) is the loop around
them: it draws the samples, runs the models and steps the optimisers.

Removal, trajectory form: at a random s, the ESD loss at H(c,s) is back-propagated into the
network's parameters, and its gradient g with respect to the factors (alpha(s), A after alpha, B)
also feeds the trajectory term mean((H(c,s+1) - H(c,s) + lambda·g)^2); one Adam step on the sum.
The ESD gradient is what erases; the trajectory term keeps H smooth along s. Direct form (the
ablation): minimise the ESD loss at s = T. Retention, its own Adam step: retain prompts keep the
factors of s = 0 (no LoRA) at a random s per prompt.
"""

import torch
import torch.nn.functional as F

from .hypernet import Factors

#: |alpha(s)| below this is taken as this when g_alpha is read back from A = alpha(s)·A_raw
ALPHA_FLOOR = 1e-6


def esd_target(anchored: torch.Tensor, concept: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's negative guidance: the frozen model's prediction for the anchor, pushed `eta` times
    away from the concept's (e_anchor - eta·(e_concept - e_anchor))."""
    return anchored - eta * (concept - anchored)


def esd_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The prediction with the LoRA against the ESD target, in float32."""
    return F.mse_loss(predicted.float(), target.float())


def mean_square(pairs) -> torch.Tensor:
    """One mean over every element of every (left - right) pair: the authors' flattened MSE."""
    total, count = 0.0, 0
    for left, right in pairs:
        total = total + (left - right).pow(2).sum()
        count += left.numel()
    return total / count


def trajectory_term(now: Factors, following: Factors, alpha_now: torch.Tensor,
                    alpha_step: torch.Tensor, removal_step: float) -> torch.Tensor:
    """mean((H(c,s+1) - H(c,s) + lambda·g)^2) over alpha(s), A and B of every layer.

    `now` holds H(c,s) after the ESD backward, so its factors' .grad is g; `following` is
    H(c,s+1), `alpha_now` alpha(s) and `alpha_step` alpha(s+1) - alpha(s), per layer ([layers],
    or [rows, layers] where each row has its own s). The
    gradient for alpha(s) follows from A = alpha(s)·A_raw as sum(g_A · A) / alpha(s).
    """
    pairs = []
    for index, (name, f) in enumerate(now.items()):
        g_down, g_up = f.down.grad, f.up.grad
        alpha = alpha_now[..., index].detach()
        alpha = torch.where(alpha.abs() < ALPHA_FLOOR, torch.full_like(alpha, ALPHA_FLOOR), alpha)
        g_alpha = (g_down * f.down.detach()).sum(dim=(1, 2)) / alpha
        pairs += [
            (alpha_step[..., index].expand_as(g_alpha), -removal_step * g_alpha),
            (following[name].down - f.down, -removal_step * g_down),
            (following[name].up - f.up, -removal_step * g_up),
        ]
    return mean_square(pairs)


def retention_term(factors: Factors, untouched: Factors) -> torch.Tensor:
    """mean((H(c_r,s) - H(c_r,0))^2): how far the retain prompts' factors moved from none."""
    return mean_square(pair for n, f in factors.items()
                       for pair in ((f.down, untouched[n].down), (f.up, untouched[n].up)))
