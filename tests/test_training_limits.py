"""Training at the widgets' limits (unhype/settings.py): learning rate 1.0 stops with a clear
TrainingDivergedError, and a short run at every bound of every numeric setting either trains or
fails with a clear TrainingDivergedError / ConfigError: never a raw exception, never a network
with NaN in it. Runs on the toy denoiser (tests/toy_denoiser.py); the settings the toy has no
use for (the denoiser's sampling) are run on the proving ground's world denoiser."""

import math

import pytest
import torch

import unhype
from test_training import make_trainer
from toy_denoiser import WIDTH, ToyDenoiser
from unhype.divergence import RETENTION_PATIENCE
from unhype.prompts import builtin_retain_prompts
from unhype.settings import SETTINGS, ConfigError, TrainingSettings, build_configs
from unhype.training import Trainer, TrainingDivergedError
from unhype.trigger import TriggerSpec

NUMERIC = [s for s in SETTINGS if s.low is not None]
#: what the denoiser does with them (ESD sampling), not the trainer
SAMPLING = ("guidance", "sampling_steps", "resolution")
SHORT = 3  # steps of each bound's run: the last one probes the LoRA norms too


class Stop(BaseException):
    """Ends a run early, as ComfyUI's Cancel does."""


def run_settings(denoiser, family: str, embed_dim: int, **values):
    """Validate the settings, build the trainer as the node does, train SHORT steps at most;
    returns (trainer, error): the error is None, or a clear one the run raised."""
    retain = builtin_retain_prompts()[:40]
    try:
        settings = TrainingSettings(concepts="zebra", preset="custom",
                                    templates="a photo of {}\n{}", builtin_retain=False,
                                    **{"steps": SHORT, **values}).validate()
    except ConfigError as error:
        return None, error
    net_config, config = build_configs(settings, family, retain,
                                       TriggerSpec("clip-pooled", embed_dim))
    targets = unhype.targets_from_preset(denoiser.lora_root, "sd-cross-kv")
    trainer = Trainer(denoiser, net_config, targets,
                      unhype.NetworkInfo(family, "sd-cross-kv", title="limits"), config)

    def stop_early(progress):
        if progress.step >= SHORT and progress.step < progress.steps:
            raise Stop

    try:
        trainer.run(on_progress=stop_early)
    except Stop:
        pass
    except (TrainingDivergedError, ConfigError) as error:
        return trainer, error
    return trainer, None


def assert_trained_or_clear(trainer, error):
    if error is not None:
        assert isinstance(error, (TrainingDivergedError, ConfigError))
        if isinstance(error, TrainingDivergedError):
            assert "Lower the learning rate" in str(error) and "No network was written" in str(
                error)
        return
    for name, value in trainer.module.state_dict().items():
        assert torch.isfinite(value).all(), f"{name} is not finite"
    network = trainer.network()
    assert network.info.activation_reference is None or math.isfinite(
        network.info.activation_reference)
    assert all(math.isfinite(h[k]) for h in trainer.history for k in ("esd", "retention"))


@pytest.mark.parametrize("name, bound", [(s.name, s.kind(b)) for s in NUMERIC
                                         for b in (s.low, s.high) if s.name not in SAMPLING])
def test_every_bound_of_every_trainer_setting_trains_or_fails_clearly(name, bound):
    trainer, error = run_settings(ToyDenoiser(), "sd1", WIDTH, **{name: bound})
    assert_trained_or_clear(trainer, error)


@pytest.fixture(scope="module")
def world():
    from unhype.world import load_world

    return load_world()


def train_world(world, denoiser=None, **settings):
    """The proving ground's own entry (unhype/world/erasure.py) erasing red, SHORT steps at most
    unless `settings` say fewer; returns the error it raised or None."""
    import dataclasses

    from unhype.world.erasure import ErasureTask, train_unhype

    def stop_early(progress):
        if progress.step >= settings.get("steps", SHORT) and progress.step < progress.steps:
            raise Stop

    if denoiser is not None:
        world = dataclasses.replace(world, denoiser=denoiser)
    try:
        network, record = train_unhype(world, ErasureTask(["red"]), on_progress=stop_early,
                                       **settings)
    except Stop:
        return None
    except (TrainingDivergedError, ConfigError) as error:
        return error
    assert all(torch.isfinite(v).all() for v in network.module.state_dict().values())
    assert all(math.isfinite(h["retention"]) for h in record["history"])
    return None


@pytest.mark.slow
@pytest.mark.parametrize("name, bound", [(s.name, s.kind(b)) for s in NUMERIC
                                         for b in (s.low, s.high)
                                         if s.name in ("guidance", "sampling_steps")])
def test_sampling_bounds_on_the_proving_ground(world, name, bound):
    """guidance and sampling_steps set the ESD sampling: the world denoiser's CFG and DDIM
    schedule (guidance 0: the world's default). resolution only sizes ComfyUI's latents."""
    from unhype.world.denoiser import WorldDenoiser

    steps = bound if name == "sampling_steps" else 50
    guidance = bound if name == "guidance" and bound else 4.0
    error = train_world(world, WorldDenoiser(world.unet, world.clip, xt_steps=steps,
                                             xt_guidance=guidance), steps=SHORT)
    assert error is None or isinstance(error, TrainingDivergedError), error


def test_learning_rate_one_stops_with_a_clear_error_on_the_toy():
    trainer = make_trainer(steps=20, learning_rate=1.0, checkpoint_every=100)
    with pytest.raises(TrainingDivergedError, match=r"Lower the learning rate \(now 1\)"):
        trainer.run()


@pytest.mark.slow
def test_learning_rate_one_stops_with_a_clear_error_on_the_proving_ground(world):
    """The issue's run: proving-ground defaults, learning rate 1.0, 20 steps."""
    error = train_world(world, steps=20, learning_rate=1.0)
    assert isinstance(error, TrainingDivergedError), error
    assert "Lower the learning rate (now 1)" in str(error)


def test_retention_held_away_from_untouched_stops_after_patience():
    """The retention rule on its own: a loss that puts the retain prompts' factors far from an
    untouched network's, RETENTION_PATIENCE steps in a row, stops with the cause named; a good
    run's level (the toy's own losses) never does."""
    trainer = make_trainer(steps=5)
    trainer.run()
    assert max(h["retention"] for h in trainer.history) < 1.0
    huge = 1e3 * trainer.config.retain_weight
    for _ in range(RETENTION_PATIENCE - 1):
        trainer.guard.loss("retention", huge, trainer.step)
    trainer.guard.loss("retention", 0.0, trainer.step)  # one good step resets the count
    for _ in range(RETENTION_PATIENCE - 1):
        trainer.guard.loss("retention", huge, trainer.step)
    with pytest.raises(TrainingDivergedError, match=rf"retention loss .* moved the retain "
                                                    rf"prompts' LoRA factors by .* "
                                                    rf"{RETENTION_PATIENCE} steps in a row "
                                                    r".*retain learning rate now"):
        trainer.guard.loss("retention", huge, trainer.step)


def test_retain_norm_growing_past_the_erase_norm_stops():
    trainer = make_trainer(steps=12)
    trainer.run()  # probes at steps 10 and 12 leave the last retain norm behind
    from unhype.divergence import RETAIN_NORM_FLOOR

    tiny = trainer.history[-1]["erase_activation"]
    assert 2.0 * tiny < RETAIN_NORM_FLOOR
    step = trainer.step
    trainer.guard.activation(tiny, 2.0 * tiny, step)  # above, but too small to change a picture
    erase = 2.0 * RETAIN_NORM_FLOOR
    trainer.guard.activation(erase, 0.9 * erase, step)  # growing, still below the erase prompts'
    with pytest.raises(TrainingDivergedError, match="retain prompts' LoRA norm grew to .* above "
                                                    "the erase prompts'"):
        trainer.guard.activation(erase, 2.0 * erase, step)
    trainer.guard.activation(erase, 1.5 * erase, step)  # above, but shrinking: not on its own
