"""Wan 2.1 / 2.2 text-to-video ("wan"): inference and bake on a tiny Wan built with ComfyUI's own
classes (WAN21_T2V, its WanModel), with umT5-shaped conditionings (prompt rows, then zero rows up
to 512, as ComfyUI's umT5 gives them) and a cond-pooled network. Training on Wan is refused."""

import logging
import sys
from types import SimpleNamespace

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import hooks_left, host, make_network, merged_reference, node
from test_nodes_models import Capture, build, run_rows
from test_trainer_node import run_trainer

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

TEXT_WIDTH = 32  # the tiny model's umT5 width (4096 in the real one)
TEXT_ROWS = 512  # umT5's minimum length: prompts are padded to it with zero rows
TINY_WAN = {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "num_heads": 2,
    "num_layers": 2, "text_dim": TEXT_WIDTH, "in_dim": 16, "out_dim": 16, "freq_dim": 32,
    "patch_size": (1, 2, 2), "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
    "eps": 1e-6,
}
T2V = ("WAN21_T2V", "WAN22_T2V")
TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # the per-row tests' (test_nodes_models.py)


def supported(name):
    found = getattr(host()[0].supported_models, name, None)
    if found is None:
        pytest.skip(f"this ComfyUI has no comfy.supported_models.{name}")
    return found


@pytest.fixture(scope="module")
def wan():
    return build(supported("WAN21_T2V"), TINY_WAN, seed=0)


@pytest.fixture(scope="module")
def network(wan):
    return make_network(wan.model.diffusion_model, "wan-cross-kv", embed_dim=2 * TEXT_WIDTH,
                        base_arch="wan", seed=5, trigger="cond-pooled", trigger_skip=0)


def umt5_cond(prompt_rows, seed):
    """A CONDITIONING as CLIP Text Encode gives it for Wan: `prompt_rows` rows of prompt, zero
    rows up to 512, no pooled vector."""
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.zeros(1, TEXT_ROWS, TEXT_WIDTH)
    tensor[0, :prompt_rows] = torch.randn(prompt_rows, TEXT_WIDTH, generator=gen)
    return [[tensor, {"pooled_output": None}]]


def reference_trigger(cond, prompt_rows):
    """Independent of unhype/trigger.py: mean and max of the prompt's own rows."""
    rows = cond[0][0][0, :prompt_rows].double()
    return torch.cat([rows.sum(0) / prompt_rows, rows.max(0).values]).float()[None]


def condition(network, cond):
    return node("UnHypeConditioner").execute(cond, network)[0]


def video_latent(channels=16):
    return torch.zeros(1, channels, 1, 8, 8)  # [batch, channels, frames, height, width]


def first_call(patcher, positive, negative, cfg):
    """Sample one step on `patcher` (no UnHype wrapper) and return the model call's inputs."""
    ns = host()[0]
    capture = Capture()
    spy = patcher.clone()
    spy.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "capture", capture)
    latent = video_latent()
    ns.sample.sample(spy, ns.sample.prepare_noise(latent, 0), 1, cfg, "euler", "normal",
                     positive, negative, latent, disable_pbar=True, seed=0)
    return capture.calls[0]


def denoiser_module():
    return sys.modules[f"{host()[1].__name__}.nodes.comfy_denoiser"]


def test_wan_cross_kv_targets_the_text_only_cross_attention(wan, network):
    names = [t.name for t in network.targets]
    assert names == [f"blocks.{b}.cross_attn.{p}" for b in range(2) for p in "kv"]
    blocks = wan.model.diffusion_model.blocks
    assert all(type(b.cross_attn).__name__ == "WanT2VCrossAttention" for b in blocks)


def test_t2v_configs_are_wan_and_their_other_subclasses_are_refused():
    """Wan's subclasses (image-to-video, Fun control, camera, VACE, HuMo, S2V, Animate, FlowRVS,
    SCAIL, causal AR, ...) take inputs UnHype knows nothing of; FlowRVS even rewrites its
    model_type to "t2v", so the class itself decides, not its unet_config."""
    models = host()[0].supported_models
    base = supported("WAN21_T2V")
    variants = [cls for cls in models.models if issubclass(cls, base)]
    assert len(variants) > 5
    for cls in variants:
        config = cls(dict(cls.unet_config))
        model = SimpleNamespace(model=SimpleNamespace(model_config=config))
        if cls.__name__ in T2V:
            assert denoiser_module().model_family(model) == "wan", cls.__name__
            continue
        with pytest.raises(denoiser_module().UnsupportedModelError,
                           match=f"this MODEL is {cls.__name__}, a variant of WAN21_T2V that "
                                 "UnHype does not take: of its classes only WAN21_T2V and "
                                 "WAN22_T2V are Wan 2.1/2.2 T2V"):
            denoiser_module().model_family(model)


@pytest.mark.parametrize("config_name", T2V)
def test_a_built_t2v_model_is_wan(config_name):
    unet = dict(TINY_WAN, in_dim=48, out_dim=48) if config_name == "WAN22_T2V" else TINY_WAN
    model = build(supported(config_name), unet)
    assert denoiser_module().model_family(model) == "wan"


def batched_call(wan, network, mode, cfg=5.0, positive_rows=7, negative_rows=12):
    """One sampling step with CFG: the cond and uncond rows of two different prompts (different
    lengths, both padded to 512 rows as umT5 pads them) in one model call."""
    positive, negative = umt5_cond(positive_rows, seed=1), umt5_cond(negative_rows, seed=2)
    pos, neg = condition(network, positive), condition(network, negative)
    call = first_call(wan, pos, neg, cfg=cfg)  # no UnHype wrapper: inputs only
    assert call["x"].shape[0] == 2 and sorted(call["cond_or_uncond"]) == [0, 1]
    triggers = {0: reference_trigger(positive, positive_rows),
                1: reference_trigger(negative, negative_rows)}
    for row, chunk in enumerate(call["cond_or_uncond"]):
        torch.testing.assert_close(call["kwargs"]["unhype_embedding"][row:row + 1, 1:],
                                   triggers[chunk], rtol=1e-5, atol=1e-6)
    patched = node("UnHypeApplyDynamicLoRA").execute(wan, network, 0.8, mode)[0]
    out = run_rows(wan.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(wan.model, call, slice(None), wrappers={})
    assert hooks_left(wan.model) == []
    return call, triggers, out, base


def test_every_row_of_a_cfg_batch_equals_its_prompts_merged_weights(wan, network):
    call, triggers, out, base = batched_call(wan, network, "all rows")
    assert (triggers[0] - triggers[1]).abs().max() > 1e-2
    for row, chunk in enumerate(call["cond_or_uncond"]):
        reference = merged_reference(wan.model, network, triggers[chunk], 0.8)
        expected = run_rows(reference, call, slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, **TOLERANCE)
        assert (out[row] - base[row]).abs().max() > 1e-4


def test_conditional_only_leaves_the_uncond_row_the_base_models(wan, network):
    call, triggers, out, base = batched_call(wan, network, "conditional only")
    row = call["cond_or_uncond"].index(1)
    assert torch.equal(out[row], base[row])
    row = call["cond_or_uncond"].index(0)
    expected = run_rows(merged_reference(wan.model, network, triggers[0], 0.8), call,
                        slice(row, row + 1))
    torch.testing.assert_close(out[row:row + 1], expected, **TOLERANCE)


def test_a_row_under_the_gate_is_the_base_model_bit_for_bit(wan, network):
    core = host()[2]
    norms = core.lora_norm(network.factors(torch.cat([reference_trigger(umt5_cond(r, s), r)
                                                      for r, s in ((7, 1), (12, 2))])))
    gated_chunk = int(norms.argmin())
    network.info.gate_threshold = float(norms.sum() / 2)
    try:
        call, triggers, out, base = batched_call(wan, network, "all rows")
    finally:
        network.info.gate_threshold = None
    for row, chunk in enumerate(call["cond_or_uncond"]):
        if chunk == gated_chunk:
            assert torch.equal(out[row], base[row])
        else:
            expected = run_rows(merged_reference(wan.model, network, triggers[chunk], 0.8), call,
                                slice(row, row + 1))
            torch.testing.assert_close(out[row:row + 1], expected, **TOLERANCE)


def test_a_clip_pooled_network_on_wan_conditioning_is_refused(wan):
    clip_pooled = make_network(wan.model.diffusion_model, "wan-cross-kv", embed_dim=768,
                               base_arch="wan", seed=5)
    with pytest.raises(ValueError, match=r"has no pooled_output, which this network \(wan, "
                                         r"trigger clip-pooled\) reads.*needs a network with "
                                         "the cond-pooled trigger"):
        condition(clip_pooled, umt5_cond(7, seed=1))


def test_an_all_zero_conditioning_is_refused(network):
    with pytest.raises(ValueError, match=r"is all zero after the 0 rows"):
        condition(network, umt5_cond(0, seed=1))


@pytest.fixture
def loras(monkeypatch, tmp_path):
    fp = host()[0].folder_paths
    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(fp.folder_names_and_paths, "loras", ([str(folder)], {".safetensors"}))
    return folder


def sample(model, positive, negative, cfg=1.0):
    ns = host()[0]
    latent = video_latent()
    return ns.sample.sample(model, ns.sample.prepare_noise(latent, 0), 2, cfg, "euler", "normal",
                            positive, negative, latent, disable_pbar=True, seed=0)


@pytest.mark.parametrize("key_format", ["comfyui", "kohya"])
def test_baked_lora_loads_every_key_and_samples_like_apply_dynamic_lora(wan, network, loras,
                                                                        caplog, key_format):
    ns = host()[0]
    positive = condition(network, umt5_cond(7, seed=1))
    negative = condition(network, umt5_cond(12, seed=2))
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=0.8, save_name="wan", key_format=key_format)
    assert "norm cap: none" in report
    with caplog.at_level(logging.WARNING):
        baked = ch.run_node(ns.nodes.LoraLoaderModelOnly, model=wan, lora_name=name,
                            strength_model=1.0)[0]
    assert not [r for r in caplog.records if "lora key not loaded" in r.getMessage()]
    with caplog.at_level(logging.WARNING):  # the log does reach caplog: a foreign key is named
        ns.sd.load_lora_for_models(wan, None, {"no_such_layer.alpha": torch.tensor(1.0)}, 1.0, 0)
    assert any("lora key not loaded: no_such_layer.alpha" in r.getMessage()
               for r in caplog.records)
    assert set(baked.patches) == {f"diffusion_model.{t.name}.weight" for t in network.targets}
    dynamic = node("UnHypeApplyDynamicLoRA").execute(wan, network, 0.8, "all rows")[0]
    # cfg 1: only the positive runs, so the static LoRA meets exactly the rows it was baked for
    expected, got = sample(dynamic, positive, negative), sample(baked, positive, negative)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    assert (got - sample(wan, positive, negative)).abs().max() > 100 * (got - expected).abs().max()


def test_bake_says_the_cap_is_not_baked_and_a_gated_prompt_bakes_to_nothing(wan, loras):
    network = make_network(wan.model.diffusion_model, "wan-cross-kv", embed_dim=2 * TEXT_WIDTH,
                           base_arch="wan", seed=6, trigger="cond-pooled", trigger_skip=0,
                           norm_cap=1e9)  # a cap that never binds
    positive = condition(network, umt5_cond(7, seed=1))
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=1.0, save_name="wan", key_format="comfyui")
    assert "4 layers read the prompt through the model's own text embedding" in report
    assert "cap is not baked" in report
    dynamic = node("UnHypeApplyDynamicLoRA").execute(wan, network, 1.0, "all rows")[0]
    baked = ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=wan, lora_name=name,
                        strength_model=1.0)[0]
    torch.testing.assert_close(sample(baked, positive, positive),
                               sample(dynamic, positive, positive), **TOLERANCE)

    core = host()[2]
    norm = float(core.lora_norm(network.factors(reference_trigger(umt5_cond(7, seed=1), 7)))[0])
    network.info.gate_threshold = 2 * norm
    positive = condition(network, umt5_cond(7, seed=1))
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=1.0, save_name="wan", key_format="comfyui")
    assert "does not trigger the network" in report
    baked = ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=wan, lora_name=name,
                        strength_model=1.0)[0]
    assert torch.equal(sample(baked, positive, positive), sample(wan, positive, positive))


def test_the_trainer_refuses_wan_naming_what_it_trains(wan):
    with pytest.raises(ValueError, match=r"UnHype Trainer: training on Wan 2.1/2.2 T2V is not "
                                         r"built: UnHype trains on SD1.x, SD2.x, SDXL and "
                                         r"Flux.1 models.*Apply Dynamic LoRA and UnHype Bake"):
        run_trainer(wan, None)
