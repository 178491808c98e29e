"""Shared pieces of the inference-node tests (tests/test_nodes_*.py): the in-process host, tiny
UnHype networks for tiny models, a tiny CLIP, an independent merged-weight reference and direct
model calls."""

import copy
import sys

import torch

_HOST = {}


def use_host(comfy, pack, nodes) -> dict:
    """Point these helpers at conftest's in-process ComfyUI and pack (its `unhype_host`
    fixture). `core` is the pack's own copy of unhype/, not the repo-root one."""
    _HOST.update(ns=comfy, pack=pack, core=sys.modules[pack.__name__ + ".unhype"], nodes=nodes)
    return _HOST


def host():
    """(ComfyUI namespace, pack module, the pack's own unhype core)."""
    return _HOST["ns"], _HOST["pack"], _HOST["core"]


def node(name):
    """The pack's node class by id; its classmethod `execute` returns an io.NodeOutput (index it
    for the outputs, `.ui` for what the page shows)."""
    return _HOST["nodes"][name]


def make_network(diffusion_model, preset="sd-cross-kv", embed_dim=64, seed=0, std=0.05,
                 base_arch="sd1", norm_cap=None, rank=2, hidden=16, **trigger):
    """A small random UnHype network for `diffusion_model` whose generated LoRAs are not zero;
    `trigger`: HyperNetConfig's trigger settings (trigger=, trigger_skip=)."""
    core = host()[2]
    targets = core.targets_from_preset(diffusion_model, preset)
    config = core.HyperNetConfig(embed_dim=embed_dim, rank=rank, hidden=hidden, norm_cap=norm_cap,
                                 seed=seed, **trigger)
    network = core.UnHypeNetwork(config, targets, core.NetworkInfo(base_arch, preset))
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in network.module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    network.module.requires_grad_(False).eval()
    return network


def merged_reference(base_model, network, embedding, strength, extra_deltas=None):
    """An independent copy of `base_model` (a comfy BaseModel) with W + strength·up@down merged
    for one pooled embedding [1, D] (and optional extra {module name: delta} merged too)."""
    ref = copy.copy(base_model)  # the BaseModel shell; its model_config cannot be deep-copied
    ref._modules = dict(base_model._modules)
    ref._modules["diffusion_model"] = copy.deepcopy(base_model.diffusion_model)
    factors = network.factors(embedding.reshape(1, -1))
    root = ref.diffusion_model
    with torch.no_grad():
        for target in network.targets:
            f = factors[target.name]
            delta = (f.up[0].double() @ f.down[0].double()) * strength
            if target.out_slice is not None:
                full = torch.zeros(target.out_features, target.in_features, dtype=torch.float64)
                full[target.out_slice[0]:target.out_slice[1]] = delta
                delta = full
            weight = root.get_submodule(target.name).weight
            weight.copy_((weight.double() + delta).to(weight.dtype))
        for name, delta in (extra_deltas or {}).items():
            weight = root.get_submodule(name).weight
            weight.copy_((weight.double() + delta.double()).to(weight.dtype))
    return ref


def call_model(patcher, x, sigma, context, embedding=None, cond_or_uncond=None,
               transformer_options_extra=None, **extra):
    """One apply_model call of the patcher's BaseModel with the patcher's wrappers, as
    calc_cond_batch makes it (cond_or_uncond and the row-aligned embedding kwarg included)."""
    ns = host()[0]
    options = {"wrappers": ns.comfy.patcher_extension.copy_nested_dicts(patcher.wrappers)}
    options.update(transformer_options_extra or {})
    if cond_or_uncond is not None:
        options["cond_or_uncond"] = list(cond_or_uncond)
    kwargs = dict(extra)
    if embedding is not None:
        kwargs["unhype_embedding"] = embedding
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=context,
                                         transformer_options=options, **kwargs)


def packed(pooled, flag=1.0):
    return torch.cat([torch.full((pooled.shape[0], 1), flag), pooled.float()], dim=1)


def hooks_left(module):
    return [name for name, m in module.named_modules()
            if m._forward_hooks or m._forward_pre_hooks]


def dynamic_state(patcher):
    """The DynamicLoRA objects an Apply Dynamic LoRA node put on this patcher."""
    ns = host()[0]
    key = ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL
    return patcher.get_wrappers(key, "unhype")


def forget_parts():
    """Clear what UnHype nodes remember of the texts they saw (process-wide,
    nodes/sampling/parts.py)."""
    sys.modules[host()[1].__name__ + ".nodes.sampling.parts"].MEMORY.clear()


TINY_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
             "num_hidden_layers": 2, "projection_dim": 64}


def make_tiny_clip(chunk=77, embedding_directory=None):
    """A tiny random CLIP-L (width 64) built with ComfyUI's classes and its real tokenizer, whose
    prompts are encoded in chunks of `chunk` tokens (ComfyUI's own max_length settings);
    textual-inversion embeddings (width 64) are read from `embedding_directory`."""
    import functools

    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    from comfy_host import fill_random_

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer,
                                                    comfy.sd1_clip.SD1ClipModel)
    tokenizer = functools.partial(comfy.sd1_clip.SDTokenizer, embedding_size=64)
    clip = comfy.sd.CLIP(
        target=target, embedding_directory=embedding_directory,
        tokenizer_data={"clip_l_max_length": chunk, "clip_l_tokenizer_class": tokenizer},
        model_options={"clip_l_model_config": {**TINY_CLIP, "max_position_embeddings": chunk},
                       "dtype": torch.float32})
    fill_random_(clip.cond_stage_model, seed=3, std=0.5)
    return clip


def chunk_length(clip):
    """The chunk length of this CLIP's prompts, as its tokenizer lays them out."""
    tokens = clip.tokenize("")
    return len(tokens["g" if "g" in tokens else "l"][0])


FILLER = " ".join(["a"] * 75)  # exactly the first 77-token chunk (start + 75 + end)
CONCEPT = "tench fish swimming in a pond"


def pooled_of(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)[1].float()


def concept_detector(tiny_model, concept, other, base_arch="sd1"):
    """A network whose LoRA is exactly zero unless the pooled vector points at `concept`."""
    network = make_network(tiny_model.model.diffusion_model, embed_dim=64, seed=6,
                           base_arch=base_arch)
    direction = (concept / concept.norm()).flatten()
    high, low = float(direction @ concept.flatten()), float(direction @ other.flatten())
    assert high > low
    with torch.no_grad():
        for head in network.module.generator.up_heads:
            head[0].weight.zero_()
            head[0].weight[:, :64] = direction * (20.0 / (high - low))
            head[0].bias.fill_(-(high + low) / 2 * (20.0 / (high - low)))
            head[2].bias.zero_()
    network.info.activation_reference = float(network.activation(concept).item())
    return network


def tiny_text_encoder(target, model_options, std=0.2, **clip_options):
    """ComfyUI's CLIP object for a text path (`target`: its ClipTarget) at the tiny size that
    `model_options` gives, float32, with random weights."""
    import comfy.sd

    from comfy_host import fill_random_

    clip = comfy.sd.CLIP(target=target, model_options={**model_options, "dtype": torch.float32},
                         **clip_options)
    fill_random_(clip.cond_stage_model, seed=3, std=std)
    return clip


def encode(clip, text):
    """CLIP Text Encode's conditioning of `text`."""
    from comfy_host import run_node

    return run_node(host()[0].nodes.CLIPTextEncode, clip=clip, text=text)[0]


def condition(network, conditioning):
    """UnHype Conditioner's output for `conditioning`."""
    return node("UnHypeConditioner").execute(conditioning, network)[0]


def check_network_file(network, conditioning, path, architecture, licence):
    """Saves `network` to `path`, checks what its header declares and that the file loads back
    with the same trigger and packs the same embedding for `conditioning`; returns (the network
    read back, the packed embedding)."""
    core = host()[2]
    core.save_unhype(str(path), network)
    metadata, _ = core.read_header(str(path))
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.license"] == licence
    assert metadata["unhype.base_arch"] == network.info.base_arch
    loaded = core.load_unhype(str(path))
    assert (loaded.config.trigger, loaded.config.trigger_skip) == (
        network.config.trigger, network.config.trigger_skip)
    packed = [c[0][1]["model_conds"]["unhype_embedding"].cond
              for c in (condition(network, conditioning), condition(loaded, conditioning))]
    assert torch.equal(packed[0], packed[1])
    return loaded, packed[0]


#: how close a row must be to its reference: the per-row tests' (test_nodes_models.py)
ROW_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def bake_and_load(model, network, positive, caplog, key_format, strength, save_name="baked"):
    """Bakes `network` for the `positive` conditioning (UnHype Bake LoRA) and loads the file
    through ComfyUI's own LoraLoaderModelOnly with its log captured: no key may go unloaded and
    every target's weight is patched. Returns (the bake's report, the patched MODEL)."""
    import logging

    from comfy_host import run_node

    name, report = run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                            strength=strength, save_name=save_name, key_format=key_format)
    with caplog.at_level(logging.WARNING):
        baked = run_node(host()[0].nodes.LoraLoaderModelOnly, model=model, lora_name=name,
                         strength_model=1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    assert set(baked.patches) == {f"diffusion_model.{t.name}.weight" for t in network.targets}
    return report, baked


def check_bake_samples_like_dynamic(model, network, positive, negative, caplog, key_format,
                                    sample, strength=0.8):
    """`bake_and_load`, then the baked MODEL samples (with `sample(model, positive, negative)`,
    at CFG 1) as Apply Dynamic LoRA does, and visibly unlike the base model. Returns the bake's
    report."""
    report, baked = bake_and_load(model, network, positive, caplog, key_format, strength)
    dynamic = node("UnHypeApplyDynamicLoRA").execute(model, network, strength, "all rows")[0]
    # cfg 1: only the positive runs, so the static LoRA meets exactly the rows it was baked for
    expected, got = sample(dynamic, positive, negative), sample(baked, positive, negative)
    torch.testing.assert_close(got, expected, **ROW_TOLERANCE)
    effect = (got - sample(model, positive, negative)).abs().max()
    assert effect > 100 * (got - expected).abs().max()
    return report


def supported_model(name):
    """comfy.supported_models.<name>, or a skip naming the class where this ComfyUI (the
    0.30.0 floor) lacks it."""
    import pytest

    found = getattr(host()[0].supported_models, name, None)
    if found is None:
        pytest.skip(f"this ComfyUI has no comfy.supported_models.{name}")
    return found


def sample_image(model, positive, negative, channels, cfg=1.0):
    """Two euler steps from a fixed noise on an 8x8 latent of `channels`."""
    ns = host()[0]
    latent = torch.zeros(1, channels, 8, 8)
    return ns.sample.sample(model, ns.sample.prepare_noise(latent, 0), 2, cfg, "euler", "normal",
                            positive, negative, latent, disable_pbar=True, seed=0)


def check_text_encode_reads_as_the_conditioner(clip, network, text):
    """UnHype Text Encode of `text` sees every token and packs the trigger that UnHype
    Conditioner packs for CLIP Text Encode's conditioning; returns that trigger [1, D]."""
    from comfy_host import run_node

    encoded, report = run_node(node("UnHypeTextEncode"), clip=clip, text=text, unhype=network)
    assert "NOT SEEN" not in report
    packed = [c[0][1]["model_conds"]["unhype_embedding"].cond[:, 1:]
              for c in (encoded, condition(network, encode(clip, text)))]
    torch.testing.assert_close(packed[0], packed[1], rtol=1e-5, atol=1e-6)
    return packed[0]


def check_prompts_of_two_lengths_run_apart(model, network, conds, latent, reference_trigger):
    """A positive conds[0] and a negative conds[1] of different lengths, which a model whose
    context does not pad cannot batch: one sampling step at CFG 4 runs them as two model calls,
    and each call's row equals the float64 merged-weight model for its own prompt."""
    from test_nodes_models import Capture, run_rows

    ns = host()[0]
    capture, spy = Capture(), model.clone()
    spy.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "capture", capture)
    ns.sample.sample(spy, ns.sample.prepare_noise(latent, 0), 1, 4.0, "euler", "normal",
                     condition(network, conds[0]), condition(network, conds[1]), latent,
                     disable_pbar=True, seed=0)
    assert sorted(c["cond_or_uncond"] for c in capture.calls) == [[0], [1]]
    assert all(c["x"].shape[0] == 1 for c in capture.calls)
    patched = node("UnHypeApplyDynamicLoRA").execute(model, network, 0.8, "all rows")[0]
    for call in capture.calls:
        trigger = reference_trigger(conds[call["cond_or_uncond"][0]])
        out = run_rows(model.model, call, slice(None), wrappers=patched.wrappers)
        expected = run_rows(merged_reference(model.model, network, trigger, 0.8), call,
                            slice(0, 1))
        torch.testing.assert_close(out, expected, **ROW_TOLERANCE)


def training_denoiser(model, clip, **options):
    """The Trainer's view of a tiny model (nodes/training/denoiser.py) at 64 pixels."""
    denoiser = sys.modules[host()[1].__name__ + ".nodes.training.denoiser"]
    return denoiser.ComfyDenoiser(model, clip, resolution=64, **options)


def check_unlike_lengths_predict_apart(model, clip, prompts):
    """`prompts` whose conditionings differ in length (a family whose text rows are not padded)
    cannot share a model call: ComfyDenoiser.predict runs them as one call each, as sampling
    does, and each row equals that prompt predicted alone. A prediction that trains refuses
    them, naming why: a row LoRA names rows of one batch."""
    import pytest

    with torch.inference_mode(False):
        denoiser = training_denoiser(model, clip, sampling_steps=3)
        assert len({denoiser.conditioning(p)[0][0].shape for p in prompts}) == len(prompts)
        gen = torch.Generator().manual_seed(0)
        x_t = torch.randn(len(prompts), *denoiser.latent_shape, generator=gen)
        sigma = denoiser.sigmas[1:2].expand(len(prompts)).clone()
        with torch.no_grad():
            together = denoiser.predict(x_t, sigma, prompts)
            alone = [denoiser.predict(x_t[i:i + 1], sigma[i:i + 1], [p])
                     for i, p in enumerate(prompts)]
        assert torch.equal(together, torch.cat(alone))
        with torch.enable_grad(), pytest.raises(ValueError, match="cannot share one model call"):
            denoiser.predict(x_t, sigma, prompts)


def check_esd_gradient_erases(model, clip, steps=6, **settings):
    """The Trainer on this tiny model with the ESD gradient alone (the "direct" objective), one
    concept whose anchor is the empty prompt and one x_t, drawn once and cached: the ESD loss
    falls over `steps` steps, and at that x_t the erase prompt's prediction moves toward the
    ESD target, eps(empty) - eta·(eps(concept) - eps(empty)). Returns the denoiser."""
    from test_trainer_node import FAST

    core, pack = host()[2], host()[1]
    run = sys.modules[pack.__name__ + ".nodes.training.run"]
    chosen = core.settings.TrainingSettings(**{
        **FAST, "concepts": "tench", "save_name": "esd", "objective": "direct", "steps": steps,
        "templates": "{}", "retain_prompts": "", "xt_cache_size": 1, **settings}).validate()
    family = sys.modules[pack.__name__ + ".nodes.models"].model_family(model)
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = training_denoiser(model, clip, sampling_steps=chosen.sampling_steps)
        trainer = run.build_trainer(denoiser, chosen, run.make_plan(chosen, family))
        untrained = copy.deepcopy(trainer.module.state_dict())
        trainer.run()
        (x_t, t, _), = trainer.xt_cache["0"]
        with torch.no_grad():
            target = trainer._esd_target(x_t, t, "tench", "")

            def prediction():
                factors = trainer.module(trainer._embed(["tench"]))
                with core.row_lora(denoiser.lora_root, trainer.module.targets, factors,
                                   norm_cap=trainer.module.config.norm_cap):
                    return denoiser.predict(x_t, t, ["tench"])

            trained = prediction()
            trainer.module.load_state_dict(untrained)
            before = prediction()
    losses = [record["esd"] for record in trainer.history]
    assert losses[-1] < losses[0], losses
    moved, wanted = (trained - before).flatten(), (target - before).flatten()
    assert (trained - target).norm() < (before - target).norm()
    assert float(moved @ wanted) > 0.5 * float(moved.norm() * wanted.norm())  # toward it
    return denoiser


def check_trainer_resumes_exactly(model, clip, steps=4, **settings):
    """The Trainer node on this tiny model: `steps` steps straight through equal `steps // 2`,
    then a resume of that checkpoint to `steps`, bit for bit (one process: the same operations
    in the same order on the same numbers). Returns the straight run's network."""
    from test_trainer_node import run_trainer

    straight = run_trainer(model, clip, save_name="straight", steps=steps, **settings)[0]
    run_trainer(model, clip, save_name="halves", steps=steps // 2, **settings)
    resumed = run_trainer(model, clip, save_name="halves", steps=steps,
                          resume="halves.safetensors", **settings)[0]
    assert resumed.info.training["steps"] == steps
    reference = straight.module.state_dict()
    changed = [name for name, value in resumed.module.state_dict().items()
               if not torch.equal(value, reference[name])]
    assert changed == []
    return straight
