"""Tests of the test harness itself: in-process ComfyUI, the tiny model, the random SD1.5
checkpoint, the pack loader, and the real server."""

from __future__ import annotations

import sys
import time

import pytest

import comfy_host

pytestmark = pytest.mark.host


def test_comfy_in_process_is_cpu(comfy):
    assert comfy.args.cpu is True
    assert str(comfy.model_management.get_torch_device()) == "cpu"
    assert "CheckpointLoaderSimple" in comfy.nodes.NODE_CLASS_MAPPINGS
    # ComfyUI's nodes.py is the top-level `nodes`, not our package
    assert comfy.nodes.__file__.endswith("nodes.py")


def test_tiny_sd1_model_has_sd1_module_names(tiny_sd1_model):
    names = dict(tiny_sd1_model.model.diffusion_model.named_modules())
    for block in comfy_host.SD1_TRANSFORMER_BLOCKS:
        for leaf in ("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.2"):
            assert f"{block}.{leaf}" in names
    assert names["input_blocks.1.1.transformer_blocks.0.attn2.to_k"].in_features == 64
    assert type(tiny_sd1_model.model.model_config).__name__ == "SD15"


def test_tiny_sd1_model_samples_with_cond_and_uncond(comfy, tiny_sd1_model, tiny_conds):
    import torch

    positive, negative = tiny_conds
    calls = []

    def wrapper(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kw):
        calls.append((x.shape[0], list(transformer_options["cond_or_uncond"])))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kw)

    import comfy.patcher_extension as pe

    model = tiny_sd1_model.clone()
    model.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "unhype-test", wrapper)
    comfy_host.sample_steps(comfy, model, positive, negative, steps=1)  # warm-up
    calls.clear()
    t0 = time.process_time()  # CPU time: the work done, the same on a busy machine
    out = comfy_host.sample_steps(comfy, model, positive, negative, steps=2, seed=3)
    elapsed = time.process_time() - t0
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
    assert len(calls) == 2 and all(sorted(c[1]) == [0, 1] and c[0] == 2 for c in calls)
    # deterministic for a fixed seed
    again = comfy_host.sample_steps(comfy, model, positive, negative, steps=2, seed=3)
    assert torch.equal(out, again)
    assert elapsed < 15, f"2 steps took {elapsed:.1f} CPU-seconds"  # ~0.5 s


@pytest.mark.slow
def test_sd15_checkpoint_loads_as_sd15(comfy, sd15_model):
    import torch

    model, clip, vae = sd15_model
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.model_type.name == "EPS"
    dm = model.model.diffusion_model
    to_k = dict(dm.named_modules())["input_blocks.1.1.transformer_blocks.0.attn2.to_k"]
    assert to_k.in_features == 768 and to_k.out_features == 320
    (positive,) = comfy_host.run_node(comfy.nodes.CLIPTextEncode, clip=clip, text="a cat")
    assert positive[0][0].shape == (1, 77, 768)
    assert positive[0][1]["pooled_output"].shape == (1, 768)
    (latent,) = comfy_host.run_node(comfy.nodes.EmptyLatentImage, width=64, height=64, batch_size=1)
    (sampled,) = comfy_host.run_node(
        comfy.nodes.KSampler, model=model, seed=0, steps=1, cfg=2.0, sampler_name="euler",
        scheduler="normal", positive=positive, negative=positive, latent_image=latent,
        denoise=1.0,
    )
    (image,) = comfy_host.run_node(comfy.nodes.VAEDecode, samples=sampled, vae=vae)
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all()


def test_pack_loads_in_process_as_v3(unhype_pack, pack_nodes):
    assert unhype_pack.__name__ == comfy_host.PACK_MODULE_NAME
    assert callable(unhype_pack.comfy_entrypoint)
    assert not hasattr(unhype_pack, "NODE_CLASS_MAPPINGS")  # V1 would win and hide every node
    assert sorted(pack_nodes) == sorted(
        n.define_schema().node_id for n in sys.modules[unhype_pack.__name__ + ".nodes"].NODES)
    assert len(pack_nodes) == 9


def test_server_answers_object_info(comfy_server):
    info = comfy_server.object_info()
    assert "KSampler" in info and "CheckpointLoaderSimple" in info
    assert not comfy_server.pack_import_failed()


def test_server_runs_a_trivial_graph(comfy_server):
    graph = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    outputs = comfy_server.run(graph, budget=60)
    (image,) = outputs["2"]["images"]
    assert comfy_server.output_path(image).is_file()


def test_server_reports_node_errors(comfy_server):
    bad = {"1": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}}
    with pytest.raises(comfy_host.PromptError):
        comfy_server.post_prompt(bad)


def test_server_lists_pack_nodes(comfy_server, pack_nodes):
    if not comfy_server.install_pack:
        pytest.skip("the pack's __init__.py does not exist yet")
    info = comfy_server.object_info()
    missing = sorted(set(pack_nodes) - set(info))
    assert not missing, f"pack nodes missing from /object_info: {missing}"


@pytest.mark.slow
def test_server_txt2img_with_random_sd15_checkpoint(comfy_server, sd15_checkpoint):
    name = comfy_server.add_model("checkpoints", sd15_checkpoint)
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "lat": {"class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
            "latent_image": ["lat", 0], "seed": 0, "steps": 1, "cfg": 2.0,
            "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        "out": {"class_type": "SaveImage",
                "inputs": {"images": ["dec", 0], "filename_prefix": "harness"}},
    }
    outputs = comfy_server.run(graph, budget=180)
    (image,) = outputs["out"]["images"]
    assert comfy_server.output_path(image).is_file()
