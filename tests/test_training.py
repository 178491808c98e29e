"""The core trainer on a small real denoiser: erasure happens, nothing is lost, runs repeat."""

import pytest
import torch

import unhype
from toy_denoiser import ToyDenoiser
from unhype.gate import choose_threshold, triggers
from unhype.prompts import Concept, builtin_retain_prompts, fill, parse_concepts
from unhype.training import TrainConfig, Trainer, TrainingDivergedError

TEMPLATES = ["a photo of {}", "{}", "a {} in a field"]
# the toy runs' own knobs (the product's defaults live in unhype/settings.py)
TOY = dict(concepts=[Concept("zebra", "")], templates=TEMPLATES, eta=1.0, removal_step=1e-4,
           removal_weight=10.0, retain_weight=5.0, retain_batch=8, removal_draws=1,
           lr_gamma=0.9, lr_every=3000, hide_concepts=False, learning_rate=3e-3,
           checkpoint_every=10, xt_cache_size=4)


def toy_config(**values) -> TrainConfig:
    return TrainConfig(**{**TOY, "retain_prompts": builtin_retain_prompts()[:40], **values})


def make_trainer(objective="trajectory", steps=40, seed=0, denoiser=None, group=None,
                 **overrides):
    denoiser = denoiser or ToyDenoiser()
    targets = unhype.targets_from_preset(denoiser.lora_root, "sd-cross-kv")
    config = toy_config(objective=objective, steps=steps, seed=seed, **overrides)
    net_config = unhype.HyperNetConfig(embed_dim=16, rank=2, hidden=32, trajectory_length=20)
    info = unhype.NetworkInfo("proving-ground", "sd-cross-kv", title="toy")
    return Trainer(denoiser, net_config, targets, info, config, group)


def esd_loss_at(trainer, s):
    x_t = torch.randn(16, 8, generator=torch.Generator().manual_seed(123))
    t = torch.rand(16, generator=torch.Generator().manual_seed(321))
    prompt = "a photo of zebra"
    target = trainer._esd_target(x_t, t, prompt, "a photo of")  # the anchor: zebra left out
    with torch.no_grad():
        factors = trainer.module(trainer._embed([prompt]), s)
        return float(trainer._esd_loss(factors, x_t, t, prompt, target))


@pytest.mark.slow
def test_direct_objective_erases_the_concept_and_spares_retain_prompts():
    trainer = make_trainer("direct", steps=600, xt_cache_size=0)
    before = esd_loss_at(trainer, 20)
    trainer.run()
    after = esd_loss_at(trainer, 20)
    assert after < 0.2 * before, (before, after)
    erase = trainer.activation(["a photo of zebra", "zebra", "a zebra in a field"]).mean()
    retain = trainer.activation(builtin_retain_prompts()[:40]).mean()
    assert erase > 3 * retain, (float(erase), float(retain))


@pytest.mark.slow
def test_trajectory_objective_lowers_the_esd_loss_at_T():
    """The ESD gradient at random s reaches H(c,T). Separation from retain prompts is proven in
    the proving ground (tests/test_demo.py): this toy's prompts share most of their words, and
    the retention's own Adam step then holds every prompt at zero."""
    trainer = make_trainer("trajectory", steps=600, xt_cache_size=0, retain_weight=0.0)
    before = esd_loss_at(trainer, 20)
    trainer.run()
    after = esd_loss_at(trainer, 20)
    assert after < 0.6 * before, (before, after)


def test_trajectory_term_is_the_distance_to_a_gradient_step():
    """At the start H(c,s+1) = H(c,s) (zero heads, alpha not yet learned), so the term is
    w_rm·mean((lambda·g)^2) over alpha(s), A and B: right sign, scale and reduction."""
    trainer = make_trainer("trajectory", steps=1, xt_cache_size=1)
    _, x_t, t, prompt, anchor = trainer._draw_removals()[0]
    target = trainer._esd_target(x_t, t, prompt, anchor)
    embedding = trainer._embed([prompt])
    now = trainer.module(embedding, 5)
    for f in now.values():
        f.down.retain_grad()
        f.up.retain_grad()
    trainer._esd_loss(now, x_t, t, prompt, target).backward()
    trainer.config.removal_step = 0.5
    term = float(trainer._trajectory_loss(embedding, 5, now).detach())
    alpha0 = trainer.module.config.alpha0
    parts = [x.grad for f in now.values() for x in (f.down, f.up)]
    parts += [(f.down.grad * f.down.detach()).sum().reshape(1) / alpha0 for f in now.values()]
    expected = sum(float((0.5 * g).pow(2).sum()) for g in parts) / sum(g.numel() for g in parts)
    assert term > 0
    assert term == pytest.approx(trainer.config.removal_weight * expected, rel=1e-5)


def test_batched_removal_draws_give_the_gradient_of_draws_taken_one_at_a_time():
    """A step's draws go through the model as one batch (per-row s, x_t runs of removal_batch
    rows): its gradient is the sum of each draw's ESD + trajectory gradient taken alone."""
    trainer = make_trainer("trajectory", steps=1, removal_draws=3, removal_batch=2,
                           xt_cache_size=0)
    trainer.config.concepts = [Concept("zebra", ""), Concept("horse", "animal")]
    draws = trainer._draw_removals()
    positions = [2, 7, 19]
    with torch.no_grad():  # a trained-looking network: nonzero heads and alpha
        for parameter in trainer.module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator()
                                              .manual_seed(parameter.numel())))

    def gradient():
        grads = [p.grad.clone() for p in trainer.module.parameters()]
        trainer.module.zero_grad(set_to_none=True)
        return grads

    embeddings, x_t, t, prompts, target, s = trainer._removal_batch(list(zip(draws, positions)))
    now = trainer.module(embeddings, s)
    for f in now.values():
        f.down.retain_grad()
        f.up.retain_grad()
    esd = 3 * trainer._esd_loss(now, x_t, t, prompts, target)
    esd.backward(retain_graph=True)
    (3 * trainer._trajectory_loss(embeddings, s, now)).backward()
    batched = gradient()
    for (_, x_t, t, prompt, anchor), s in zip(draws, positions):
        embedding = trainer._embed([prompt])
        now = trainer.module(embedding, s)
        for f in now.values():
            f.down.retain_grad()
            f.up.retain_grad()
        loss = trainer._esd_loss(now, x_t, t, prompt, trainer._esd_target(x_t, t, prompt, anchor))
        loss.backward(retain_graph=True)
        trainer._trajectory_loss(embedding, s, now).backward()
    one_at_a_time = gradient()
    assert len({d[3] for d in draws}) > 1 or len(set(positions)) > 1
    for left, right in zip(batched, one_at_a_time, strict=True):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-7)
    assert any(float(g.abs().max()) > 0 for g in batched)


def test_a_steps_new_x_t_are_sampled_in_one_call_and_the_cache_keeps_its_size():
    calls = []
    denoiser = ToyDenoiser()
    sample = denoiser.sample_xt

    def counting(prompts, count, generator):
        if count == 2:  # the removal draws' (the separation check samples its probes 1 a call)
            calls.append(list(prompts))
        return sample(prompts, count, generator)

    denoiser.sample_xt = counting
    trainer = make_trainer(steps=12, denoiser=denoiser, removal_draws=4, removal_batch=2,
                           xt_cache_size=3)
    trainer.config.concepts = [Concept("zebra", ""), Concept("horse", "")]
    trainer.run()
    assert len(calls) <= 12 and max(len(c) for c in calls) > 1
    assert trainer.xt_samplings == sum(len(c) for c in calls)
    assert sorted(len(pool) for pool in trainer.xt_cache.values()) == [3, 3]
    for pool in trainer.xt_cache.values():
        assert all(x_t.shape[0] == 2 and t.shape == (2,) for x_t, t, _ in pool)


def test_resume_continues_to_the_same_result(tmp_path):
    uninterrupted = make_trainer(steps=30)
    uninterrupted.run()

    checkpoint = str(tmp_path / "run.ckpt.safetensors")
    first = make_trainer(steps=30)

    def cancel_at_17(progress):
        if progress.step == 17:
            raise KeyboardInterrupt("user pressed cancel")

    with pytest.raises(KeyboardInterrupt):
        first.run(checkpoint, on_progress=cancel_at_17)
    resumed = make_trainer(steps=30)
    resumed.load_checkpoint(checkpoint)
    assert resumed.step == 17
    resumed.run(checkpoint)
    for name, value in uninterrupted.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[name]), name
    assert [h["removal"] for h in resumed.history] == [h["removal"] for h in uninterrupted.history]


class InterruptingDenoiser(ToyDenoiser):
    """Raises like ComfyUI's Cancel (a BaseException from inside a model forward) at one call."""

    def __init__(self, at_call):
        super().__init__()
        self.calls, self.at_call = 0, at_call

    def _tick(self):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt("cancel inside a model forward")

    def sample_xt(self, prompts, count, generator):
        self._tick()
        return super().sample_xt(prompts, count, generator)

    def predict(self, x_t, t, prompts):
        self._tick()
        return super().predict(x_t, t, prompts)


@pytest.mark.parametrize("objective", ["trajectory", "direct"])
# five model calls a step (x_t: 2, ESD target: 2, ESD forward: 1): calls 26..30 are step 6
@pytest.mark.parametrize("at_call", [26, 27, 28, 29, 30])
def test_cancel_inside_a_model_forward_resumes_as_uninterrupted(tmp_path, objective, at_call):
    uninterrupted = make_trainer(objective, steps=12, xt_cache_size=0)
    uninterrupted.run()
    checkpoint = str(tmp_path / "run.ckpt.safetensors")
    first = make_trainer(objective, steps=12, xt_cache_size=0,
                         denoiser=InterruptingDenoiser(at_call))
    with pytest.raises(KeyboardInterrupt):
        first.run(checkpoint)
    resumed = make_trainer(objective, steps=12, xt_cache_size=0)
    resumed.load_checkpoint(checkpoint)
    assert resumed.step == 5
    resumed.run(checkpoint)
    for name, value in uninterrupted.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[name]), name


def test_resume_refuses_other_settings(tmp_path):
    checkpoint = str(tmp_path / "run.ckpt.safetensors")
    make_trainer(steps=3).run(checkpoint)
    other = make_trainer(steps=3, eta=2.0)
    with pytest.raises(ValueError, match="other training settings"):
        other.load_checkpoint(checkpoint)


def test_same_seed_same_network_other_seed_other_network():
    runs = [make_trainer(steps=8, seed=seed) for seed in (1, 1, 2)]
    for run in runs:
        run.run()
    states = [run.module.state_dict() for run in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


class ExplodingDenoiser(ToyDenoiser):
    """Turns every prediction into NaN once `exploded` is set."""

    exploded = False

    def predict(self, x_t, t, prompts):
        out = super().predict(x_t, t, prompts)
        return out * float("nan") if self.exploded else out


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    checkpoint = str(tmp_path / "run.ckpt.safetensors")
    denoiser = ExplodingDenoiser()
    trainer = make_trainer(steps=50, denoiser=denoiser, checkpoint_every=10)

    def explode_after_25(progress):
        denoiser.exploded = progress.step >= 25

    with pytest.raises(TrainingDivergedError, match="non-finite"):
        trainer.run(checkpoint, explode_after_25)
    restored = make_trainer(steps=50)
    restored.load_checkpoint(checkpoint)
    assert restored.step == 20
    assert all(torch.isfinite(v).all() for v in restored.module.state_dict().values())


def test_exploding_learning_rate_stops_with_a_clear_error(tmp_path):
    """lr 1e6 diverges without a NaN: caught, named, no network, the checkpoint left alone."""
    checkpoint = str(tmp_path / "run.ckpt.safetensors")
    trainer = make_trainer(steps=40, checkpoint_every=10)
    trainer.run(checkpoint)
    wild = make_trainer(steps=80, learning_rate=1e6, checkpoint_every=10)
    wild.config.learning_rate = 3e-3  # resume needs the same settings; then explode
    wild.load_checkpoint(checkpoint)
    for optimizer in wild.optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = 1e6
    kept_message = r"diverged.*last good checkpoint .* \(step 40\)"
    with pytest.raises(TrainingDivergedError, match=kept_message):
        wild.run(checkpoint)
    kept = make_trainer(steps=40)
    kept.load_checkpoint(checkpoint)
    assert kept.step == 40


def test_exploding_run_from_scratch_writes_nothing():
    with pytest.raises(TrainingDivergedError, match="no checkpoint was written"):
        make_trainer(steps=50, learning_rate=1e6).run()


def test_hidden_concepts_stay_out_of_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "run.ckpt.safetensors"
    make_trainer(steps=3, hide_concepts=True).run(str(checkpoint))
    assert b"zebra" not in checkpoint.read_bytes()
    resumed = make_trainer(steps=4, hide_concepts=True)
    resumed.load_checkpoint(str(checkpoint))
    assert resumed.step == 3


def test_xt_cache_reuses_samples():
    cached = make_trainer(steps=20, xt_cache_size=4)
    cached.run()
    fresh = make_trainer(steps=20, xt_cache_size=0)
    fresh.run()
    assert cached.xt_samplings == 4
    assert fresh.xt_samplings == 20


@pytest.mark.parametrize("hide", [False, True])
def test_trained_file_has_full_metadata(tmp_path, hide):
    trainer = make_trainer(steps=5, hide_concepts=hide)
    result = trainer.run()
    path = str(tmp_path / "zebra.safetensors")
    unhype.save_unhype(path, result.network)
    loaded = unhype.load_unhype(path)
    training = loaded.info.training
    assert training["steps"] == 5 and training["objective"] == "trajectory"
    assert training["retain_count"] == 40 and training["seed"] == 0
    assert training["concepts_sha256"] == unhype.fileformat.concepts_digest(["zebra"])
    assert ("concepts" in training) is not hide
    assert loaded.info.activation_reference and loaded.info.activation_reference > 0
    erase = trainer.activation([fill(t, "zebra") for t in TEMPLATES])
    retain = trainer.activation(builtin_retain_prompts()[:40])
    assert loaded.info.gate_threshold == pytest.approx(choose_threshold(erase, retain))
    assert triggers(erase, loaded.info.gate_threshold).all()  # no erase prompt is gated
    metadata, _ = unhype.read_header(path)
    assert metadata["modelspec.architecture"] == "unhype-proving-ground/unhype"


def test_the_anchor_takes_the_concepts_place_in_the_same_prompt():
    """Keep the rest: the anchor prompt is the erase prompt with the concept replaced by the
    anchor word, or left out ("" and "concept -> -" alike)."""
    assert fill("a photo of a {} circle", "") == "a photo of a circle"
    assert parse_concepts("zebra -> -")[0].anchor == ""
    trainer = make_trainer(steps=1)
    for anchor_word in ("", "a horse"):
        trainer.config.concepts = [Concept("zebra", anchor_word)]
        for _ in range(5):
            _, _, _, prompt, anchor = trainer._draw_removals()[0]
            assert "zebra" in prompt
            assert anchor == " ".join(prompt.replace("zebra", anchor_word).split())


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="objective"):
        make_trainer(objective="magic")
    with pytest.raises(ValueError, match="'{}'"):
        toy_config(objective="trajectory", steps=1, seed=0, templates=["no slot"])


def test_separation_check_flags_a_network_that_learned_nothing():
    """One step of training: no trigger and no effect on the ESD loss, so the run is flagged and
    told what to change; the check's probes leave the training's random stream alone."""
    trainer = make_trainer(steps=1)
    untouched = make_trainer(steps=1)
    result = trainer.run()
    separation = result.separation
    assert not separation.separated
    assert separation.residual == pytest.approx(1.0, abs=0.05)
    assert "steps" in separation.advice()
    assert result.network.info.training["separation"]["separated"] is False
    untouched.run()
    for a, b in zip(trainer.module.parameters(), untouched.module.parameters()):
        assert torch.equal(a, b)


def test_held_out_templates_are_not_trained_on():
    from unhype.separation import HELD_OUT_EVERY, split_templates

    templates = [f"t{i} {{}}" for i in range(2 * HELD_OUT_EVERY)]
    trained, held = split_templates(templates)
    assert held and not set(trained) & set(held) and sorted(trained + held) == sorted(templates)
    assert split_templates(templates[:3]) == (templates[:3], templates[:3])
