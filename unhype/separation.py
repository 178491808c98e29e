"""Did a training run separate? A check computed from the network itself, with no judge model.

Two readings, both on prompts of templates held out from training:
- trigger: how strongly erase prompts trigger the network (their LoRA norm) against the
  strongest retain prompt's. A network that erases nothing, or everything, has a ratio near 1.
- residual: the ESD loss with the network's LoRA divided by the loss without it, on x_t sampled
  once for the check (the median over the probes: one x_t at a high noise level can dominate a
  mean). 1.0 is a network that does nothing; an erasing one removes most of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .prompts import fill

#: every HELD_OUT_EVERY-th template is kept out of training for the check (when there are at
#: least that many); fewer templates are all trained on and also checked on
HELD_OUT_EVERY = 8
PROBES = 8  # x_t of held-out templates, sampled once per run
RETAIN_PROBES = 64
TRIGGER_MIN = 5.0  # erase prompts' mean LoRA norm over the strongest retain prompt's
RESIDUAL_MAX = 0.8  # ESD loss left with the LoRA on


def split_templates(templates: list[str]) -> tuple[list[str], list[str]]:
    """(training templates, held-out templates for the check)."""
    if len(templates) < HELD_OUT_EVERY:
        return list(templates), list(templates)
    held = set(range(HELD_OUT_EVERY - 1, len(templates), HELD_OUT_EVERY))
    return ([t for i, t in enumerate(templates) if i not in held],
            [t for i, t in enumerate(templates) if i in held])


@dataclass
class Separation:
    step: int
    erase_norm: float  # mean LoRA norm of the held-out erase prompts
    retain_norm: float  # largest LoRA norm of the retain prompts
    residual: float  # ESD loss with the LoRA / without it, median over the probes

    @property
    def trigger(self) -> float:
        return self.erase_norm / max(self.retain_norm, 1e-12)

    @property
    def separated(self) -> bool:
        return self.trigger >= TRIGGER_MIN and self.residual <= RESIDUAL_MAX

    def summary(self) -> str:
        verdict = "separated" if self.separated else "NOT SEPARATED"
        return (f"separation at step {self.step}: erase prompts trigger {self.trigger:.3g}x the "
                f"strongest retain prompt (LoRA norm {self.erase_norm:.3g} vs "
                f"{self.retain_norm:.3g}; needs {TRIGGER_MIN:g}x), ESD residual "
                f"{self.residual:.2f} (1 = no effect; needs <= {RESIDUAL_MAX:g}): {verdict}")

    def advice(self) -> str:
        """What to change when the run did not separate."""
        if self.residual > RESIDUAL_MAX:
            return ("its LoRA does not remove the concept on held-out prompts: train more steps, "
                    "raise the learning rate or eta, or try objective 'direct' or variant "
                    "'paper'")
        return ("retain prompts trigger it nearly as strongly as erase prompts, so other "
                "prompts would change too: add retain prompts unlike the concepts, raise "
                "retain_weight, and check that no retain prompt names a concept")

    def to_dict(self) -> dict:
        return {**asdict(self), "trigger": self.trigger, "separated": self.separated}


class SeparationCheck:
    """The check's fixed probes for one run (drawn with their own generator, so the training's
    random stream is the same with or without it) and the reading at a given network state."""

    def __init__(self, trainer, seed: int):
        config = trainer.config
        self.trainer = trainer
        _, held_out = split_templates(config.templates)
        generator = torch.Generator().manual_seed(seed + 7919)
        self.erase_prompts = [fill(t, c.name) for c in config.concepts for t in held_out]
        self.retain_prompts = list(config.retain_prompts[:RETAIN_PROBES])
        self.probes = []
        for k in range(PROBES):
            concept = config.concepts[k % len(config.concepts)]
            template = held_out[(k // len(config.concepts)) % len(held_out)]
            prompt = fill(template, concept.name)
            with torch.no_grad():
                x_t, t = trainer.denoiser.sample_xt([prompt], 1, generator)
            x_t, t = x_t.to(trainer.device), t.to(trainer.device)
            target = trainer._esd_target(x_t, t, prompt, fill(template, concept.anchor))
            with torch.no_grad():
                plain = trainer.denoiser.predict(x_t, t, [prompt])
            self.probes.append((x_t, t, prompt, target, float(_mse(plain, target))))

    @torch.no_grad()
    def __call__(self, step: int) -> Separation:
        trainer = self.trainer
        erase = float(trainer.activation(self.erase_prompts).mean())
        retain = float(trainer.activation(self.retain_prompts).max()) \
            if self.retain_prompts else 0.0
        T = trainer.module.config.trajectory_length
        ratios = []
        for x_t, t, prompt, target, plain in self.probes:
            factors = trainer.module(trainer._embed([prompt]), T)
            left = float(trainer._esd_loss(factors, x_t, t, prompt, target))
            ratios.append(left / max(plain, 1e-12))
        return Separation(step, erase, retain, float(torch.tensor(ratios).median()))


def _mse(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(left.float(), right.float())
