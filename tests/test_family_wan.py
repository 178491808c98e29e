"""Wan 2.1 / 2.2 text-to-video ("wan"): inference and bake on a tiny Wan built with ComfyUI's own
classes (WAN21_T2V, its WanModel), prompts encoded by CLIP Text Encode through ComfyUI's own umT5
classes (WanT5Tokenizer with a tiny SentencePiece model trained here, a tiny random UMT5: 512
rows, the prompt's then zeros, no pooled vector) and a cond-pooled network. The Trainer trains
it: its ESD gradient moves the erase prompt's prediction toward its target and a resumed run
equals a straight one."""

import io
import logging
import sys
from types import SimpleNamespace

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    ROW_TOLERANCE,
    check_bake_samples_like_dynamic,
    check_esd_gradient_erases,
    check_network_file,
    check_trainer_resumes_exactly,
    condition,
    encode,
    hooks_left,
    host,
    make_network,
    merged_reference,
    node,
    supported_model,
    tiny_text_encoder,
)
from test_nodes_models import Capture, build, run_rows

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

TEXT_WIDTH = 32  # the tiny model's umT5 width (4096 in the real one)
TEXT_ROWS = 512  # umT5's minimum length: prompts are padded to it with zero rows
TINY_WAN = {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 32, "ffn_dim": 64, "num_heads": 2,
    "num_layers": 2, "text_dim": TEXT_WIDTH, "in_dim": 16, "out_dim": 16, "freq_dim": 32,
    "patch_size": (1, 2, 2), "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
    "eps": 1e-6,
}
WAN22_5B = dict(TINY_WAN, in_dim=48, out_dim=48)  # Wan 2.2 TI2V-5B: its own 48-channel VAE
T2V = ("WAN21_T2V", "WAN22_T2V")


@pytest.fixture(scope="module")
def wan():
    return build(supported_model("WAN21_T2V"), TINY_WAN, seed=0)


@pytest.fixture(scope="module")
def network(wan):
    return make_network(wan.model.diffusion_model, "wan-cross-kv", embed_dim=2 * TEXT_WIDTH,
                        base_arch="wan", seed=5, std=0.2, trigger="cond-pooled",
                        trigger_skip=0)


PROMPTS = ("a photo of a dog on a beach at night", "a red brick house under a clear sky",
           "tench fish swimming in a pond", "an image of a cat", "red", "a photo")
POSITIVE, NEGATIVE = "tench fish swimming in a pond", "red"  # of different lengths


@pytest.fixture(scope="module")
def umt5():
    """A tiny umT5 text encoder (TEXT_WIDTH wide) with ComfyUI's Wan tokenizer and model
    classes; the SentencePiece model is trained on PROMPTS (40 pieces, pad 0, end 1: umT5's)."""
    import comfy.supported_models_base
    import comfy.text_encoders.wan as wan_te
    sentencepiece = pytest.importorskip("sentencepiece")

    spiece = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(PROMPTS * 20), model_writer=spiece, vocab_size=40, pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    target = comfy.supported_models_base.ClipTarget(wan_te.WanT5Tokenizer, wan_te.te())
    config = {"d_model": TEXT_WIDTH, "d_ff": 64, "d_kv": 16, "num_heads": 2, "num_layers": 2,
              "vocab_size": 40}
    return tiny_text_encoder(target, {"umt5xxl_model_config": config}, std=0.5,
                             tokenizer_data={"spiece_model": spiece.getvalue()})


def prompt_rows(umt5, text):
    """How many of the 512 rows are the prompt's: its tokens up to the end token, by the
    tokenizer (the rows after them are umT5's zero padding)."""
    ids = [token for token, _ in umt5.tokenize(text)["umt5xxl"][0]]
    return ids.index(1) + 1


def reference_trigger(umt5, cond, text):
    """Independent of unhype/trigger.py: mean and max of the prompt's own rows."""
    rows = cond[0][0][0, :prompt_rows(umt5, text)].double()
    return torch.cat([rows.sum(0) / rows.shape[0], rows.max(0).values]).float()[None]


def video_latent(channels=16):
    return torch.zeros(1, channels, 1, 8, 8)  # [batch, channels, frames, height, width]


def first_call(patcher, positive, negative, cfg, channels=16):
    """Sample one step on `patcher` (no UnHype wrapper) and return the model call's inputs."""
    ns = host()[0]
    capture = Capture()
    spy = patcher.clone()
    spy.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "capture", capture)
    latent = video_latent(channels)
    ns.sample.sample(spy, ns.sample.prepare_noise(latent, 0), 1, cfg, "euler", "normal",
                     positive, negative, latent, disable_pbar=True, seed=0)
    return capture.calls[0]


def models_module():
    return sys.modules[f"{host()[1].__name__}.nodes.models"]


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
    base = supported_model("WAN21_T2V")
    variants = [cls for cls in models.models if issubclass(cls, base)]
    assert len(variants) > 5
    for cls in variants:
        config = cls(dict(cls.unet_config))
        model = SimpleNamespace(model=SimpleNamespace(model_config=config))
        if cls.__name__ in T2V:
            assert models_module().model_family(model) == "wan", cls.__name__
            continue
        with pytest.raises(models_module().UnsupportedModelError,
                           match=f"this MODEL is {cls.__name__}, a variant of WAN21_T2V that "
                                 "UnHype does not take: of its classes only WAN21_T2V and "
                                 "WAN22_T2V are Wan 2.1/2.2 T2V"):
            models_module().model_family(model)


@pytest.mark.parametrize("config_name", T2V)
def test_a_built_t2v_model_is_wan(config_name):
    unet = WAN22_5B if config_name == "WAN22_T2V" else TINY_WAN
    model = build(supported_model(config_name), unet)
    assert models_module().model_family(model) == "wan"


def batched_call(wan, umt5, network, mode, cfg=5.0, channels=16):
    """One sampling step with CFG: the cond and uncond rows of two prompts of different lengths
    (both padded to 512 rows by umT5) in one model call."""
    positive, negative = encode(umt5, POSITIVE), encode(umt5, NEGATIVE)
    assert prompt_rows(umt5, POSITIVE) > prompt_rows(umt5, NEGATIVE)
    pos, neg = condition(network, positive), condition(network, negative)
    call = first_call(wan, pos, neg, cfg=cfg, channels=channels)  # no UnHype wrapper
    assert call["x"].shape[0] == 2 and sorted(call["cond_or_uncond"]) == [0, 1]
    triggers = {0: reference_trigger(umt5, positive, POSITIVE),
                1: reference_trigger(umt5, negative, NEGATIVE)}
    for row, chunk in enumerate(call["cond_or_uncond"]):
        torch.testing.assert_close(call["kwargs"]["unhype_embedding"][row:row + 1, 1:],
                                   triggers[chunk], rtol=1e-5, atol=1e-6)
    patched = node("UnHypeApplyDynamicLoRA").execute(wan, network, 0.8, mode)[0]
    out = run_rows(wan.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(wan.model, call, slice(None), wrappers={})
    assert hooks_left(wan.model) == []
    return call, triggers, out, base


def test_umt5_pads_with_zero_rows_and_shares_no_leading_row(umt5):
    """What the cond-pooled trigger relies on, from ComfyUI's own umT5: zero rows after the end
    token, and no start token (so a Wan network skips no row)."""
    conds = [encode(umt5, text)[0] for text in PROMPTS[:3]]
    for (tensor, options), text in zip(conds, PROMPTS):
        rows = prompt_rows(umt5, text)
        assert tensor.shape == (1, TEXT_ROWS, TEXT_WIDTH) and options["pooled_output"] is None
        assert bool(tensor[0, :rows].ne(0).any(1).all()) and not tensor[0, rows:].any()
    assert host()[2].trigger.shared_rows([c[0][0] for c in conds]) == 0


@pytest.fixture(scope="module")
def wan22():
    model = build(supported_model("WAN22_T2V"), WAN22_5B, seed=1)
    return model, make_network(model.model.diffusion_model, "wan-cross-kv",
                               embed_dim=2 * TEXT_WIDTH, base_arch="wan", seed=7, std=0.2,
                               trigger="cond-pooled", trigger_skip=0)


@pytest.mark.parametrize("config_name", T2V)
def test_every_row_of_a_cfg_batch_equals_its_prompts_merged_weights(request, umt5, config_name):
    if config_name == "WAN22_T2V":
        (wan, network), channels = request.getfixturevalue("wan22"), 48
    else:
        wan, network, channels = (request.getfixturevalue("wan"),
                                  request.getfixturevalue("network"), 16)
    call, triggers, out, base = batched_call(wan, umt5, network, "all rows", channels=channels)
    assert (triggers[0] - triggers[1]).abs().max() > 1e-2
    for row, chunk in enumerate(call["cond_or_uncond"]):
        reference = merged_reference(wan.model, network, triggers[chunk], 0.8)
        expected = run_rows(reference, call, slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)
        error, effect = (out[row] - expected[0]).abs().max(), (out[row] - base[row]).abs().max()
        assert effect > 1e-3 and effect > 100 * error


def test_conditional_only_leaves_the_uncond_row_the_base_models(wan, umt5, network):
    call, triggers, out, base = batched_call(wan, umt5, network, "conditional only")
    row = call["cond_or_uncond"].index(1)
    assert torch.equal(out[row], base[row])
    row = call["cond_or_uncond"].index(0)
    expected = run_rows(merged_reference(wan.model, network, triggers[0], 0.8), call,
                        slice(row, row + 1))
    torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)


def test_a_row_under_the_gate_is_the_base_model_bit_for_bit(wan, umt5, network):
    core = host()[2]
    triggers = [reference_trigger(umt5, encode(umt5, text), text) for text in (POSITIVE, NEGATIVE)]
    norms = core.lora_norm(network.factors(torch.cat(triggers)))
    gated_chunk = int(norms.argmin())
    network.info.gate_threshold = float(norms.sum() / 2)
    try:
        call, triggers, out, base = batched_call(wan, umt5, network, "all rows")
    finally:
        network.info.gate_threshold = None
    for row, chunk in enumerate(call["cond_or_uncond"]):
        if chunk == gated_chunk:
            assert torch.equal(out[row], base[row])
        else:
            expected = run_rows(merged_reference(wan.model, network, triggers[chunk], 0.8), call,
                                slice(row, row + 1))
            torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)
            assert (out[row] - base[row]).abs().max() > 1e-4


def test_a_network_for_another_wan_size_is_refused_naming_the_model(network):
    wider = build(supported_model("WAN21_T2V"), dict(TINY_WAN, dim=64, num_heads=4))
    with pytest.raises(ValueError, match=r"made for wan \(target preset wan-cross-kv\), but the "
                                         r"model is WAN21 \(WAN21_T2V \{'dim': 64, 'num_layers': "
                                         r"2\}\)(.|\n)*shape: blocks.0.cross_attn.k is "
                                         r"64->64, the network expects 32->32"):
        node("UnHypeApplyDynamicLoRA").execute(wider, network, 1.0, "conditional only")


def test_a_clip_pooled_network_on_wan_conditioning_is_refused(wan, umt5):
    clip_pooled = make_network(wan.model.diffusion_model, "wan-cross-kv", embed_dim=768,
                               base_arch="wan", seed=5)
    with pytest.raises(ValueError, match=r"has no pooled_output, which this network \(wan, "
                                         r"trigger clip-pooled\) reads.*needs a network with "
                                         "the cond-pooled trigger"):
        condition(clip_pooled, encode(umt5, POSITIVE))


def test_a_zeroed_out_negative_runs_the_base_model(wan, umt5, network):
    """ConditioningZeroOut (the usual negative of distilled models) leaves no prompt to read:
    zeroed before the Conditioner or after it, the entry runs the base model, row for row."""
    zero_out = host()[0].nodes.ConditioningZeroOut
    positive = condition(network, encode(umt5, POSITIVE))
    zeroed = ch.run_node(zero_out, conditioning=encode(umt5, POSITIVE))[0]
    before = node("UnHypeConditioner").execute(zeroed, network)
    assert "entry 1: all zero (ConditioningZeroOut)" in before.ui["text"][0]
    call = first_call(wan, positive, before[0], cfg=5.0)
    patched = node("UnHypeApplyDynamicLoRA").execute(wan, network, 0.8, "all rows")[0]
    out = run_rows(wan.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(wan.model, call, slice(None), wrappers={})
    negative_row = call["cond_or_uncond"].index(1)
    assert torch.equal(out[negative_row], base[negative_row])
    assert not torch.equal(out[1 - negative_row], base[1 - negative_row])
    after = ch.run_node(zero_out, conditioning=positive)[0]  # keeps the packed embedding
    assert torch.equal(sample(patched, positive, after, cfg=5.0),
                       sample(patched, positive, before[0], cfg=5.0))


def sample(model, positive, negative, cfg=1.0):
    ns = host()[0]
    latent = video_latent()
    return ns.sample.sample(model, ns.sample.prepare_noise(latent, 0), 2, cfg, "euler", "normal",
                            positive, negative, latent, disable_pbar=True, seed=0)


@pytest.mark.parametrize("key_format", ["comfyui", "kohya"])
def test_baked_lora_loads_every_key_and_samples_like_apply_dynamic_lora(wan, umt5, network, loras,
                                                                        caplog, key_format):
    positive = condition(network, encode(umt5, POSITIVE))
    negative = condition(network, encode(umt5, NEGATIVE))
    report = check_bake_samples_like_dynamic(wan, network, positive, negative, caplog,
                                             key_format, sample)
    assert "norm cap: none" in report
    with caplog.at_level(logging.WARNING):  # the log does reach caplog: a foreign key is named
        host()[0].sd.load_lora_for_models(wan, None, {"no_such_layer.alpha": torch.tensor(1.0)},
                                          1.0, 0)
    assert any("lora key not loaded: no_such_layer.alpha" in r.getMessage()
               for r in caplog.records)


def test_bake_says_the_cap_is_not_baked_and_a_gated_prompt_bakes_to_nothing(wan, umt5, loras):
    network = make_network(wan.model.diffusion_model, "wan-cross-kv", embed_dim=2 * TEXT_WIDTH,
                           base_arch="wan", seed=6, trigger="cond-pooled", trigger_skip=0,
                           norm_cap=1e9)  # a cap that never binds
    positive = condition(network, encode(umt5, POSITIVE))
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=1.0, save_name="wan", key_format="comfyui")
    assert "4 layers read the prompt through the model's own text embedding" in report
    assert "cap is not baked" in report
    dynamic = node("UnHypeApplyDynamicLoRA").execute(wan, network, 1.0, "all rows")[0]
    baked = ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=wan, lora_name=name,
                        strength_model=1.0)[0]
    torch.testing.assert_close(sample(baked, positive, positive),
                               sample(dynamic, positive, positive), **ROW_TOLERANCE)

    core = host()[2]
    trigger = reference_trigger(umt5, encode(umt5, POSITIVE), POSITIVE)
    norm = float(core.lora_norm(network.factors(trigger))[0])
    network.info.gate_threshold = 2 * norm
    positive = condition(network, encode(umt5, POSITIVE))
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=1.0, save_name="wan", key_format="comfyui")
    assert "does not trigger the network" in report
    baked = ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=wan, lora_name=name,
                        strength_model=1.0)[0]
    assert torch.equal(sample(baked, positive, positive), sample(wan, positive, positive))


def test_a_wan_network_file_declares_wan_and_loads_back(umt5, network, tmp_path):
    loaded, packed = check_network_file(network, encode(umt5, POSITIVE),
                                        tmp_path / "wan.safetensors", "wan-2.1-t2v/unhype",
                                        "Apache-2.0")
    assert (loaded.config.trigger, loaded.config.trigger_skip) == ("cond-pooled", 0)
    # the weights read back are the written ones bit for bit; the factors agree to float noise
    # (the same matmuls on tensors at other addresses may take other kernels)
    saved = network.module.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in loaded.module.state_dict().items())
    made, read = network.factors(packed[:, 1:]), loaded.factors(packed[:, 1:])
    assert all(torch.allclose(made[name].up, read[name].up, rtol=0, atol=1e-6) for name in made)


@pytest.mark.parametrize("model", ["wan", "wan22"])
def test_the_trainers_esd_gradient_moves_the_erase_prediction_toward_its_target(request, model,
                                                                                 umt5):
    """Wan 2.1 (and 2.2 A14B's experts, the same class) and Wan 2.2 TI2V-5B (its 48-channel
    VAE, 16x downscale): one-frame latents, CFG 5 with the empty prompt as the negative."""
    found = request.getfixturevalue(model)
    check_esd_gradient_erases(found[0] if model == "wan22" else found, umt5)


def test_the_trainer_resumes_exactly_and_saves_a_cond_pooled_wan_network(wan, umt5, folders):
    network = check_trainer_resumes_exactly(wan, umt5)
    assert (network.info.base_arch, network.info.target_preset) == ("wan", "wan-cross-kv")
    assert (network.config.trigger, network.config.embed_dim) == ("cond-pooled", 2 * TEXT_WIDTH)
