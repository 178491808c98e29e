"""UnHype Trainer node and headless trainer against a real ComfyUI (in-process, CPU).

The node tests use the tiny SD1.x UNet (context 64) with a tiny CLIP built from ComfyUI's own
SD1 CLIP classes (64-d, 2 layers, random weights), so a few training steps take seconds. The
headless test runs `python -m unhype train` in a subprocess on the generated random SD1.5
checkpoint (full-size CLIP-L), with settings that keep the number of CLIP encodings tiny.
"""

import dataclasses
import logging
import os
import sys
import textwrap
import time

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import call_model, host, node, packed

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

FAST = dict(preset="custom", objective="trajectory", steps=3, learning_rate=1e-3, rank=2,
            variant="paper", seed=0, checkpoint_every=2, retain_prompts="a dog\na red car",
            builtin_retain=False, templates="{}\na photo of {}", eta=1.0, hidden=8,
            sampling_steps=3, resolution=64, xt_cache_size=2)


@pytest.fixture(scope="module")
def tiny_clip(unhype_pack):
    """A 64-d, 2-layer SD1-style CLIP (ComfyUI classes, SD1 tokenizer, random weights)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    options = {"clip_l_model_config": {"hidden_size": 64, "intermediate_size": 128,
                                       "num_attention_heads": 2, "num_hidden_layers": 2}}
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer,
                                                    comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target=target, model_options=options)
    ch.fill_random_(clip.cond_stage_model, seed=3, std=0.2)
    return clip


@pytest.fixture(scope="module")
def tiny_model(unhype_pack):
    # SD1 module names, 32/64 channels: cheaper than the shared tiny UNet (GroupNorm needs 64
    # channels at the 1x1 bottom of an 8x8 latent)
    return ch.build_tiny_sd1_model(host()[0], seed=0, unet_config={"channel_mult": [1, 2, 2, 2]})


def run_trainer(model, clip, concepts="zebra\ntench -> fish", save_name="erased", **overrides):
    inputs = dict(FAST, **overrides)
    return ch.run_node_raw(node("UnHypeTrainer"), model=model, clip=clip, concepts=concepts,
                           save_name=save_name, **inputs)


def test_trainer_node_trains_saves_and_feeds_apply_dynamic_lora(tiny_model, tiny_clip, folders,
                                                                monkeypatch):
    events = []

    class PromptServer:  # stands in for ComfyUI's server.PromptServer while the node runs
        instance = type("I", (), {"send_sync": lambda self, e, d: events.append((e, d))})()

    monkeypatch.setitem(sys.modules, "server", type(sys)("server"))
    monkeypatch.setattr(sys.modules["server"], "PromptServer", PromptServer, raising=False)
    started = time.monotonic()
    out = run_trainer(tiny_model, tiny_clip)
    seconds = time.monotonic() - started
    steps = [d["step"] for e, d in events if e == "unhype.training" and "step" in d]
    assert steps == [1, 2, 3], events
    assert set(events[0][1]["losses"]) == {"removal", "retention", "esd"}
    assert events[-1][1] == {"node": None, "done": True, "file": "erased.safetensors"}
    network, plot = out.result
    report = out.ui["text"][0]
    assert "saved erased.safetensors" in report, report
    assert (folders["unhype"] / "erased.safetensors").is_file()
    card = (folders["unhype"] / "erased.md").read_text(encoding="utf-8")  # the model card
    assert card.startswith("# erased\n") and "separation check at step" in card
    assert "model card erased.md" in report
    assert (folders["unhype_checkpoints"] / "erased.safetensors").is_file()
    # the loss plot is a ComfyUI IMAGE
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32
    assert 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0
    # the network: SD1 preset on the tiny UNet, 64-d embeddings, the training recorded
    core = host()[2]
    assert network.info.base_arch == "sd1" and network.info.target_preset == "sd-cross-kv"
    assert network.config.embed_dim == 64 and network.config.rank == 2
    assert network.info.training["steps"] == 3
    assert network.info.training["concepts"] == ["zebra", "tench"]
    # the file loads through the UnHype Loader node and matches the output
    loader = node("UnHypeLoader")
    assert "erased.safetensors" in loader.INPUT_TYPES()["required"]["unhype_name"][1]["options"]
    loaded = ch.run_node(loader, unhype_name="erased.safetensors")[0]
    assert isinstance(loaded, core.UnHypeNetwork)
    for name, value in network.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[name], value)
    # ... and the node output works directly in Apply Dynamic LoRA
    patched = node("UnHypeApplyDynamicLoRA").execute(tiny_model, network, 1.0, "all rows")[0]
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 77, 64, generator=gen)
    pooled = torch.randn(1, 64, generator=gen)
    result = call_model(patched, x, torch.full((1,), 2.0), context, packed(pooled))
    assert torch.isfinite(result).all()
    print(f"trainer node: 3 steps in {seconds:.1f}s")


def test_trainer_draws_a_preview_beside_the_network_when_given_the_vae(folders, caplog):
    """Proving ground (its model, CLIP and pixel-space VAE, as the node gives them): the grid of
    two erase and two retain prompts without and with the network is written beside it and named
    by its card; without a VAE, or with one that fails, the network is saved and the report
    says why there is no preview."""
    from PIL import Image

    model, clip, vae = ch.run_node(node("UnHypeProvingGround"))
    world = dict(FAST, resolution=32, templates="a {} circle\na photo of a {} square",
                 retain_prompts="a blue circle\na green square", steps=4)
    out = ch.run_node_raw(node("UnHypeTrainer"), model=model, clip=clip, vae=vae,
                          concepts="red", save_name="red", **world)
    report = out.ui["text"][0]
    assert "preview red.preview.png (upload it with the card)" in report, report
    grid = Image.open(folders["unhype"] / "red.preview.png")
    preview = sys.modules[host()[1].__name__ + ".nodes.training.preview"]
    assert grid.format == "PNG" and grid.height > 4 * preview.PREVIEW_CELL
    card = (folders["unhype"] / "red.md").read_text(encoding="utf-8")
    assert "](red.preview.png)" in card
    # a long-running server stays clean: the preview's patched MODEL leaves no dead entry
    from test_nodes_lifetime import dead_entries

    assert dead_entries() == []
    with caplog.at_level(logging.INFO):
        host()[0].model_management.load_models_gpu([model.clone()])  # a later model load
    assert not [r for r in caplog.records if "memory leak" in r.getMessage()]

    out = ch.run_node_raw(node("UnHypeTrainer"), model=model, clip=clip, concepts="red",
                          save_name="novae", **world)
    assert "no preview: connect the checkpoint's VAE" in out.ui["text"][0]
    assert not (folders["unhype"] / "novae.preview.png").exists()

    class BrokenVAE:  # a VAE whose decode fails: the network must still be saved
        def decode(self, samples):
            raise RuntimeError("decoder out of memory")

    out = ch.run_node_raw(node("UnHypeTrainer"), model=model, clip=clip, vae=BrokenVAE(),
                          concepts="red", save_name="broken", **world)
    assert "no preview: RuntimeError: decoder out of memory" in out.ui["text"][0]
    assert (folders["unhype"] / "broken.safetensors").is_file()
    assert "preview.png" not in (folders["unhype"] / "broken.md").read_text(encoding="utf-8")

    # hidden concepts: the preview would show them, so none is drawn
    out = ch.run_node_raw(node("UnHypeTrainer"), model=model, clip=clip, vae=vae,
                          concepts="red", save_name="hidden", hide_concepts=True, **world)
    assert "no preview: hide_concepts is on" in out.ui["text"][0]
    assert not (folders["unhype"] / "hidden.preview.png").exists()
    assert "**Erases:** hidden concepts (1;" in (folders["unhype"] / "hidden.md").read_text(
        encoding="utf-8")


def test_trainer_rejects_bad_inputs_with_clear_errors(tiny_model, tiny_clip, folders):
    with pytest.raises(ValueError, match="no concepts to erase"):
        run_trainer(tiny_model, tiny_clip, concepts="  \n ")
    with pytest.raises(ValueError, match="templates"):
        run_trainer(tiny_model, tiny_clip, templates="no placeholder")

    class NotSD:  # a MODEL of a family UnHype does not train on
        model = type("M", (), {"model_config": object()})()

    with pytest.raises(ValueError, match=r"UnHype works on SD1\.x, SD2\.x, SDXL, Flux\.1"):
        run_trainer(NotSD(), tiny_clip)
    # a file in the checkpoints folder that is not a training checkpoint
    (folders["unhype_checkpoints"] / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="resume: .*not a readable"):
        run_trainer(tiny_model, tiny_clip, resume="junk.safetensors")
    with pytest.raises(ValueError, match="not found"):
        run_trainer(tiny_model, tiny_clip, resume="missing.safetensors")
    # an UnHype network (not a checkpoint) put in the checkpoints folder
    from _nodes_helpers import make_network

    network = make_network(tiny_model.model.diffusion_model, embed_dim=64)
    host()[2].save_unhype(str(folders["unhype_checkpoints"] / "net.safetensors"), network)
    with pytest.raises(ValueError, match="not an UnHype training checkpoint"):
        run_trainer(tiny_model, tiny_clip, resume="net.safetensors")
    # a real checkpoint, resumed with other settings
    run_trainer(tiny_model, tiny_clip, steps=1, save_name="other")
    with pytest.raises(ValueError, match="cannot continue this training.*same model and settings"):
        run_trainer(tiny_model, tiny_clip, steps=2, eta=0.5, resume="other.safetensors")


def test_a_family_the_table_does_not_train_is_refused_naming_those_it_trains(tiny_model,
                                                                           tiny_clip,
                                                                           monkeypatch):
    """A family entered for inference and bake only (`Family.trains` False: none is today) stops
    the Trainer before any work, with the families the table trains."""
    families = host()[2].families
    monkeypatch.setitem(families.FAMILIES, "sd1",
                        dataclasses.replace(families.FAMILIES["sd1"], trains=False))
    trained = families.checkpoint_labels(trains_only=True)
    assert "SD1.x" not in trained
    with pytest.raises(ValueError) as refused:
        run_trainer(tiny_model, tiny_clip)
    assert str(refused.value) == (
        "UnHype Trainer: training on SD1.x is not built yet: its UnHype networks run (Apply "
        f"Dynamic LoRA, UnHype Bake LoRA), but the Trainer trains {', '.join(trained[:-1])} and "
        f"{trained[-1]} models only. Load one of those checkpoints to train.")


def test_cancel_keeps_a_checkpoint_and_resume_finishes_like_an_uninterrupted_run(
        tiny_model, tiny_clip, folders, monkeypatch):
    mm = host()[0].model_management
    import comfy.utils

    def press_cancel(value, total, preview, node_id=None):
        # what the server's progress hook does after POST /interrupt: the flag is set and the
        # next check raises
        if value == 1:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", press_cancel)
    with pytest.raises(mm.InterruptProcessingException):
        run_trainer(tiny_model, tiny_clip, save_name="cancelled", checkpoint_every=100)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    mm.interrupt_current_processing(False)
    checkpoint = folders["unhype_checkpoints"] / "cancelled.safetensors"
    assert checkpoint.is_file(), "a cancel must leave a checkpoint"
    assert not (folders["unhype"] / "cancelled.safetensors").exists()
    load_state = sys.modules[host()[2].__name__ + ".checkpoint"].load_state
    state = load_state(str(checkpoint), "unhype-training-checkpoint")
    assert state["step"] == 1
    # the checkpoint is offered in the resume list and finishes the run
    trainer_cls = node("UnHypeTrainer")
    assert "cancelled.safetensors" in trainer_cls.INPUT_TYPES()["optional"]["resume"][1]["options"]
    resumed = run_trainer(tiny_model, tiny_clip, save_name="cancelled",
                          checkpoint_every=100, resume="cancelled.safetensors")[0]
    assert resumed.info.training["steps"] == 3
    assert (folders["unhype"] / "cancelled.safetensors").is_file()
    # same result as a run that was never interrupted (same seed, same settings)
    straight = run_trainer(tiny_model, tiny_clip, save_name="cancelled",
                           checkpoint_every=100)
    assert "saved cancelled_2.safetensors" in straight.ui["text"][0]  # never overwritten
    assert (folders["unhype"] / "cancelled_2.safetensors").is_file()
    assert (folders["unhype_checkpoints"] / "cancelled_2.safetensors").is_file()
    # Tolerance: one Adam step moves a weight by ~lr = 1e-3. Runs on a loaded 2-core machine
    # were seen to differ by up to 2.2e-5 in a few elements (CPU float reductions), identical
    # otherwise; 1e-4 is a tenth of a step.
    reference = straight[0].module.state_dict()
    for name, value in resumed.module.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["trajectory", "direct"])
def test_cancel_inside_a_model_forward_resumes_like_an_uninterrupted_run(
        tiny_model, tiny_clip, folders, monkeypatch, objective):
    """ComfyUI raises Cancel inside every comfy op (comfy/ops.py run_every_op), so a click lands
    mid-step: during x_t sampling, an ESD target or the LoRA forward. Each resumes exactly."""
    mm = host()[0].model_management
    import comfy.utils

    unet = tiny_model.model.diffusion_model
    calls, ends = [0], []
    interrupt_at = [None]

    def count(module, args):
        calls[0] += 1
        if calls[0] == interrupt_at[0]:
            mm.interrupt_current_processing(True)  # the next comfy op in this forward raises

    def record_step(value, total, preview, node_id=None):
        ends.append(calls[0])

    handle = unet.register_forward_pre_hook(count)
    try:
        monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", record_step)
        settings = dict(objective=objective, checkpoint_every=100, steps=6)
        straight = run_trainer(tiny_model, tiny_clip, save_name="straight", **settings)
        reference = straight[0].module.state_dict()
        first, second = ends[1] + 1, ends[2]  # the UNet calls of step 3
        assert second - first >= 2, ends
        for number, at in enumerate(sorted({first, (first + second) // 2, second})):
            calls[0], interrupt_at[0] = 0, at
            name = f"cut_{number}"
            with pytest.raises(mm.InterruptProcessingException):
                run_trainer(tiny_model, tiny_clip, save_name=name, **settings)
            mm.interrupt_current_processing(False)
            interrupt_at[0] = None
            resumed = run_trainer(tiny_model, tiny_clip, save_name=name,
                                  resume=f"{name}.safetensors", **settings)[0]
            worst = max(float((value - reference[key]).abs().max())
                        for key, value in resumed.module.state_dict().items())
            # float noise of these CPU runs: <= 2.2e-5 (see above); a step that was not rewound
            # differs by 1.5e-4 .. 1e-2
            assert worst <= 3e-5, (at, worst)
    finally:
        handle.remove()
        mm.interrupt_current_processing(False)


def test_exploding_learning_rate_stops_with_a_clear_error_and_writes_no_network(
        tiny_model, tiny_clip, folders):
    with pytest.raises(ValueError, match=r"UnHype Trainer: training diverged: .*learning rate"):
        run_trainer(tiny_model, tiny_clip, save_name="wild", learning_rate=1.0, steps=30,
                    checkpoint_every=100)
    assert not (folders["unhype"] / "wild.safetensors").exists()
    with pytest.raises(ValueError, match=r"learning_rate: must be between 0 and 1"):
        run_trainer(tiny_model, tiny_clip, save_name="wild", learning_rate=1e6)


def test_denoiser_predict_is_the_models_denoised_estimate_with_gradients(tiny_model, tiny_clip):
    """predict == apply_model with the prompt's conditioning; a LoRA on lora_root gets grads."""
    denoiser_mod = sys.modules[host()[1].__name__ + ".nodes.training.denoiser"]
    core = host()[2]
    with torch.inference_mode(False):
        denoiser = denoiser_mod.ComfyDenoiser(tiny_model, tiny_clip, sampling_steps=4,
                                              resolution=64)
        x_t, sigma = denoiser.sample_xt(["a zebra"], 2, torch.Generator().manual_seed(0))
        assert x_t.shape == (2, 4, 8, 8) and sigma.shape == (2,)
        assert torch.isfinite(x_t).all()
        assert all(float(s) in [float(v) for v in denoiser.sigmas] for s in sigma)
        prompts = ["a zebra", "a dog"]
        out = denoiser.predict(x_t, sigma, prompts)
        cond = [denoiser.conditioning(p)[0][0] for p in prompts]
        with torch.no_grad():
            reference = tiny_model.model.apply_model(x_t, sigma, c_crossattn=torch.cat(cond))
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
        targets = core.targets_from_preset(denoiser.lora_root, "sd-cross-kv")
        factors = {t.name: core.RowFactors(
            torch.randn(2, 1, t.in_features, requires_grad=True),
            torch.randn(2, t.delta_features, 1, requires_grad=True)) for t in targets}
        with core.row_lora(denoiser.lora_root, targets, factors):
            loss = denoiser.predict(x_t, sigma, prompts).square().mean()
        loss.backward()
        first = factors[targets[0].name]
        assert first.up.grad is not None and first.up.grad.abs().sum() > 0
    assert denoiser.embed(prompts).shape == (2, 64)


@pytest.mark.slow
def test_headless_train_command_writes_the_same_kind_of_file(comfyui_path, sd15_checkpoint,
                                                             tmp_path):
    config = tmp_path / "cfg.toml"
    config.write_text(textwrap.dedent(f"""
        model = "{sd15_checkpoint}"
        comfyui_path = "{comfyui_path}"
        output = "{tmp_path / 'out'}"
        checkpoint_dir = "{tmp_path / 'ckpt'}"
        concepts = ["zebra"]
        preset = "custom"
        templates = ["{{}}"]
        retain_prompts = ["a dog"]
        builtin_retain = false
        steps = 2
        learning_rate = 1e-3
        rank = 1
        hidden = 8
        sampling_steps = 3
        resolution = 64
        xt_cache_size = 1
        retain_batch = 1
        checkpoint_every = 1
        save_name = "headless net"
    """))
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    proc = ch.run_watched([sys.executable, "-m", "unhype", "train", str(config)], budget=300,
                          cwd=ch.REPO_ROOT, env=env)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step 2/2" in proc.stdout, proc.stdout
    written = tmp_path / "out" / "headless_net.safetensors"
    assert written.is_file(), proc.stdout
    assert (tmp_path / "ckpt" / "headless_net.safetensors").is_file()
    assert (tmp_path / "out" / "headless_net.loss.png").is_file()
    import unhype  # the core, through conftest's finder

    network = unhype.load_unhype(str(written))
    assert network.info.base_arch == "sd1" and network.info.target_preset == "sd-cross-kv"
    assert network.config.embed_dim == 768 and len(network.targets) == 32
    assert network.info.training["steps"] == 2
    print(f"headless: 2 steps on the random SD1.5 checkpoint in {seconds:.1f}s")


# ------------------------------------------------------------------------------------------
# the real server: the shipped training workflow, Cancel through POST /interrupt, resume
# ------------------------------------------------------------------------------------------
WORKFLOW = ch.REPO_ROOT / "workflows" / "train_unhype.json"
SERVER_TRAINING = dict(preset="custom", templates="{}", retain_prompts="a dog",
                       builtin_retain=False, learning_rate=1e-3, rank=1, hidden=8,
                       sampling_steps=3, resolution=64, xt_cache_size=1)


def _training_api(server, info, ckpt, **trainer_inputs):
    import json

    from _workflow_api import to_api

    api = to_api(json.loads(WORKFLOW.read_text()), info)
    by_type = {n["class_type"]: n for n in api.values()}
    by_type["CheckpointLoaderSimple"]["inputs"]["ckpt_name"] = ckpt
    by_type["UnHypeTrainer"]["inputs"].update(SERVER_TRAINING, **trainer_inputs)
    by_type["EmptyLatentImage"]["inputs"].update(width=64, height=64)
    by_type["KSampler"]["inputs"]["steps"] = 2
    return api


def _files(server, folder):
    return sorted(p.name for p in server.workdir.rglob(f"{folder}/*.safetensors"))


@pytest.mark.slow
def test_training_workflow_on_the_server_cancel_and_resume(comfy_server, sd15_checkpoint):
    """The shipped graph is valid, trains on the random SD1.5 checkpoint (weights loaded under
    the server's inference mode), Cancel (POST /interrupt) keeps a checkpoint, resume finishes
    it, and the sampler in the same graph runs with the trained network."""
    import json

    from _workflow_api import validate

    info = comfy_server.object_info()
    assert info["UnHypeTrainer"]["display_name"] == "UnHype Trainer"
    assert validate(json.loads(WORKFLOW.read_text()), info) == []
    ckpt = comfy_server.add_model("checkpoints", sd15_checkpoint)
    # 1. a long run, cancelled once the first checkpoint exists
    api = _training_api(comfy_server, info, ckpt, steps=500, checkpoint_every=1,
                        save_name="server_run")
    prompt_id = comfy_server.post_prompt(api)
    watch = comfy_server.watch(240, "the first training checkpoint")
    while "server_run.safetensors" not in _files(comfy_server, "unhype_checkpoints"):
        watch.check(lambda: comfy_server.log(4000))
        time.sleep(0.5)
    status, _ = comfy_server.request("POST", "/interrupt", {})
    assert status == 200
    with pytest.raises(ch.PromptError):
        comfy_server.wait_history(prompt_id, budget=120)
    checkpoint = next(comfy_server.workdir.rglob("unhype_checkpoints/server_run.safetensors"))
    load_state = sys.modules[host()[2].__name__ + ".checkpoint"].load_state
    done = load_state(str(checkpoint), "unhype-training-checkpoint")["step"]
    assert 1 <= done < 500
    assert "server_run.safetensors" not in _files(comfy_server, "unhype")
    # 2. resume from it (the resume list is read fresh from the folder), a few steps more
    info = comfy_server.object_info("UnHypeTrainer")
    resume = info["UnHypeTrainer"]["input"]["optional"]["resume"][1]["options"]
    assert "server_run.safetensors" in resume
    api = _training_api(comfy_server, comfy_server.object_info(), ckpt, steps=done + 2,
                        checkpoint_every=1, save_name="server_run",
                        resume="server_run.safetensors")
    outputs = comfy_server.run(api, budget=300)
    assert "server_run.safetensors" in _files(comfy_server, "unhype")
    assert load_state(str(checkpoint), "unhype-training-checkpoint")["step"] == done + 2
    reports = [o["text"][0] for o in outputs.values() if "text" in o]
    assert any("saved server_run.safetensors" in r for r in reports), reports
    images = [o["images"][0] for o in outputs.values() if "images" in o]
    assert len(images) == 2  # the loss plot preview and the sampled image
    assert all(comfy_server.output_path(i).is_file() for i in images)
