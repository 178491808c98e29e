"""Telling a run that diverged from one that is learning, so it stops with the cause named
instead of saving a network that changes every prompt (or none)."""

import math
from collections.abc import Callable

# A loss above LOSS_LIMIT, or after GROWTH_WARMUP steps GROWTH_LIMIT times its largest value so
# far (once that is above LEVEL_FLOOR), or a generated LoRA norm above ACTIVATION_LIMIT (working
# ones: ~1-150).
LOSS_LIMIT = 1e8
GROWTH_LIMIT = 1e4
GROWTH_WARMUP = 10
LEVEL_FLOOR = 1e-6
ACTIVATION_LIMIT = 1e5
# Retention lost: for RETENTION_PATIENCE steps in a row, the retain prompts' factors moved (mean
# square, the retention loss over w_rt) by more than RETENTION_LIMIT times the mean square of an
# untouched network's factors (proving-ground default run: ~1e-3 at the start, ~2e-6 later;
# learning rate 1.0: ~80 after one step). Or, at a probe after GROWTH_WARMUP steps, the retain
# prompts' mean LoRA norm above RETAIN_RATIO times the erase prompts' and still growing (default
# run: 0.17 at step 25, under 0.03 from step 50).
RETENTION_LIMIT = 1.0
RETENTION_PATIENCE = 3
RETAIN_RATIO = 1.0
#: ...and only once the retain prompts' LoRA has a norm that changes pictures: early in a run
#: both are tiny and either may lead (a toy run had 0.157 against 0.136 at step 12)
RETAIN_NORM_FLOOR = 1.0


class TrainingDivergedError(RuntimeError):
    """Training diverged; no network is written and the last good checkpoint is kept."""


class DivergenceGuard:
    """The checks a Trainer runs on each loss and each activation probe. `peaks` (the largest
    values so far, the retention count, the last retain norm) belong to a checkpoint, so a
    resumed run is judged as an uninterrupted one."""

    def __init__(self, config, untouched_scale: Callable[[], float]):
        """`config`: the run's TrainConfig; `untouched_scale`: the mean square of an untouched
        network's factors, which retention moves are measured against."""
        self.config = config
        self.untouched_scale = untouched_scale
        self.peaks: dict[str, float] = {}

    def loss(self, name: str, value: float, step: int) -> float:
        """The value of loss `name` in the step after `step` completed ones; raises
        `TrainingDivergedError` when it is non-finite or huge, or far above the largest value
        it had so far (not its average: an ESD loss in denoised space legitimately spans orders
        of magnitude with the noise level of x_t)."""
        peak = self.peaks.get(name, 0.0)
        reason = None
        if not math.isfinite(value):
            reason = "became non-finite"
        elif value > LOSS_LIMIT:
            reason = f"reached {value:.3g}"
        elif step >= GROWTH_WARMUP and peak > LEVEL_FLOOR and value > GROWTH_LIMIT * peak:
            reason = f"jumped to {value:.3g}, {value / peak:.0f}x its largest value so far"
        if reason:
            raise TrainingDivergedError(f"the {name} loss {reason} at step {step + 1}")
        self.peaks[name] = max(peak, value)
        if name == "retention":
            self._retention(value, step)
        return value

    def _retention(self, value: float, step: int) -> None:
        """Raises when the retention loss has held the retain prompts' factors far from their
        untouched values for RETENTION_PATIENCE steps in a row (see RETENTION_LIMIT)."""
        if not self.config.retain_weight or not self.config.retain_prompts:
            return
        moved = value / self.config.retain_weight / self.untouched_scale()
        above = self.peaks.get("retention steps above limit", 0.0) + 1 if (
            moved > RETENTION_LIMIT) else 0.0
        self.peaks["retention steps above limit"] = above
        if above >= RETENTION_PATIENCE:
            retain_rate = self.config.retain_learning_rate or self.config.learning_rate
            raise TrainingDivergedError(
                f"the retention loss ({value:.3g}) moved the retain prompts' LoRA factors by "
                f"{moved:.3g}x the mean square of an untouched network's for {int(above)} steps "
                f"in a row at step {step + 1}, so prompts to keep are changed too (retain "
                f"learning rate now {retain_rate:g})")

    def activation(self, erase: float, retain: float, step: int) -> None:
        """The probes' mean LoRA norms after `step` steps: raises when either is non-finite or
        huge, or when the retain prompts' passes RETAIN_RATIO times the erase prompts' and is
        still growing."""
        value = max(erase, retain)
        if not math.isfinite(value) or value > ACTIVATION_LIMIT:
            raise TrainingDivergedError(
                f"the generated LoRA's norm reached {value:.3g} at step {step} (working "
                "ones stay under ~150)")
        before = self.peaks.get("retain norm", math.inf)
        self.peaks["retain norm"] = retain
        if (step > GROWTH_WARMUP and self.config.retain_weight and retain > before
                and retain > max(RETAIN_RATIO * erase, RETAIN_NORM_FLOOR)):
            raise TrainingDivergedError(
                f"the retain prompts' LoRA norm grew to {retain:.3g} at step {step}, above "
                f"the erase prompts' ({erase:.3g}): the network changes the prompts to keep more "
                "than those to erase")
