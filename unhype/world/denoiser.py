"""The proving-ground model behind the `Denoiser` protocol, plus a CFG sampler for evaluation.

Classifier-free guidance layout: every guided UNet call is ONE batch of 2N rows,
[N conditional rows (the prompts); N unconditional rows (the empty prompt "")], like ComfyUI's
batched cond/uncond. Code that hooks a per-row LoRA onto `lora_root` and must spare the
unconditional branch passes `unet_context` to `sample`: a callable
`unet_context(row_prompts, cond_mask)` returning a context manager that is entered around each
UNet call, with `row_prompts` (2N strings) and `cond_mask` (bool [2N], True for the cond rows).
`sample_xt` never uses it: its x_t must come from the frozen model (no hooks attached).
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from .tiny_clip import TinyClip
from .tiny_unet import NoiseSchedule, TinyUNet

UnetContext = Callable[[list[str], torch.Tensor], AbstractContextManager]


class WorldDenoiser:
    """Tiny CLIP + tiny UNet as seen by the UnHype trainer; eps-prediction, t in 0..999."""

    def __init__(
        self, unet: TinyUNet, clip: TinyClip, xt_steps: int = 50, xt_guidance: float = 4.0
    ):
        self.lora_root = unet
        self.unet = unet
        self.clip = clip
        self.device = next(unet.parameters()).device
        self.schedule = NoiseSchedule(self.device)
        self.xt_steps = xt_steps
        self.xt_guidance = xt_guidance
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-token states, pooled) per prompt, encoded once per distinct string."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            with torch.no_grad():
                states, pooled = self.clip.text_states(missing)
            self._text_cache.update(zip(missing, zip(states, pooled, strict=True), strict=True))
        states, pooled = zip(*(self._text_cache[p] for p in prompts), strict=True)
        return torch.stack(states), torch.stack(pooled)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        return self._text(prompts)[1].float()

    def text_states(self, prompts: Sequence[str]) -> list[torch.Tensor]:
        return list(self._text(prompts)[0])

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.unet(x_t, t.to(self.device), self._text(prompts)[0])

    def _guided_eps(
        self,
        x: torch.Tensor,
        t: int,
        prompts: Sequence[str],
        guidance: float,
        unet_context: UnetContext | None,
    ) -> torch.Tensor:
        n = len(prompts)
        rows = list(prompts) + [""] * n
        cond_mask = torch.arange(2 * n, device=self.device) < n
        timesteps = torch.full((2 * n,), t, device=self.device)
        with unet_context(rows, cond_mask) if unet_context else nullcontext():
            cond, uncond = self.predict(torch.cat([x, x]), timesteps, rows).chunk(2)
        return uncond + guidance * (cond - uncond)

    def _noise(self, count: int, generator: torch.Generator) -> torch.Tensor:
        # Drawn on the generator's device, then moved: same numbers whatever the model device.
        noise = torch.randn(count, 3, 32, 32, generator=generator, device=generator.device)
        return noise.to(self.device)

    @torch.no_grad()
    def sample_xt(
        self, prompts: Sequence[str], count: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ESD x_t: DDIM (xt_steps schedule, CFG xt_guidance) stopped after a random step count.

        Each sample stops after k ~ U{0..xt_steps-2} steps; returns its x_t and the integer
        timestep of its noise level (the t `predict` takes). All rows run in one batch, a row
        leaving it at its stop.
        """
        rows = [p for p in prompts for _ in range(count)]
        timesteps = NoiseSchedule.ddim_timesteps(self.xt_steps)
        stops = torch.randint(
            self.xt_steps - 1, (len(rows),), generator=generator, device=generator.device
        )
        stops = stops.to(self.device)
        x = self._noise(len(rows), generator)
        x_t = x.clone()
        running = torch.arange(len(rows), device=self.device)
        for i in range(int(stops.max()) + 1):
            stopping = stops[running] == i
            x_t[running[stopping]] = x[stopping]
            running, x = running[~stopping], x[~stopping]
            if not len(running):
                break
            eps = self._guided_eps(x, timesteps[i], [rows[k] for k in running.tolist()],
                                   self.xt_guidance, None)
            x = self.schedule.ddim_step(x, eps, timesteps[i], timesteps[i + 1])
        return x_t, torch.tensor(timesteps, device=self.device)[stops]

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        generator: torch.Generator,
        steps: int = 25,
        guidance: float = 4.0,
        unet_context: UnetContext | None = None,
    ) -> torch.Tensor:
        """DDIM (eta 0) with CFG; float images [N, 3, 32, 32] in [0, 1], one per prompt."""
        timesteps = NoiseSchedule.ddim_timesteps(steps)
        x = self._noise(len(prompts), generator)
        for i, t in enumerate(timesteps):
            eps = self._guided_eps(x, t, prompts, guidance, unet_context)
            t_prev = timesteps[i + 1] if i + 1 < steps else None
            x = self.schedule.ddim_step(x, eps, t, t_prev)
        return ((x + 1) / 2).clamp(0, 1)
