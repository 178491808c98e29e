"""The one thing the trainer needs from a text-to-image model, whatever its architecture.

Prompts travel as strings: each implementation encodes (and caches) them in its own way, so the
same training loop drives a ComfyUI model and the proving-ground model.
"""

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn


class Denoiser(Protocol):
    """A frozen text-to-image denoiser seen through the eyes of the UnHype trainer."""

    #: Module whose dotted submodule names the hypernetwork targets refer to.
    lora_root: nn.Module
    device: torch.device

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP's pooled text embedding of each prompt, [N, D] float32 (the "clip-pooled"
        trigger, unhype/trigger.py)."""

    def text_states(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        """The text conditioning the model reads for each prompt, [rows, D] per prompt (the
        cross-attention context or text-token stream), the "cond-pooled" trigger's input."""

    def sample_xt(
        self, prompts: Sequence[str], count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ESD-style partial sampling with the frozen model (no LoRA), `count` samples of each
        prompt (several prompts at once: a step's draws of many concepts).

        Runs a random number of sampler steps per sample and returns (x_t [prompts x count, ...],
        t [prompts x count]), each prompt's rows together, where t is whatever `predict` expects
        as its noise level.
        """

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Model prediction for each row with its own prompt (one prompt per row).

        Must be differentiable with respect to any LoRA hooked onto `lora_root`; the output
        space (noise, velocity or denoised image) only has to be the same for every call.
        """
