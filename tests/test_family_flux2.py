"""Flux.2 Klein, inference, bake and training: a tiny Flux.2 built from ComfyUI's own classes with
random weights (and ComfyUI's Klein tokenizer and Qwen3 text encoder at a tiny width) and a
cond-pooled network on the flux2-text preset. Each row of one batched sampling call equals an
independent float64 merged-weight model for that row's prompt; a row under the gate is the base
model's bit for bit; a clip-pooled network is refused; the Trainer's ESD gradient moves the erase
prompt's prediction toward its target and a resumed run equals a straight one; a baked file loads
through ComfyUI's LoRA loader with every key and samples as Apply Dynamic LoRA does."""

import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    ROW_TOLERANCE,
    bake_and_load,
    check_esd_gradient_erases,
    check_trainer_resumes_exactly,
    encode,
    hooks_left,
    host,
    make_network,
    merged_reference,
    node,
    sample_image,
    supported_model,
    tiny_text_encoder,
)
from test_nodes_models import TINY_FLUX, build, first_call, run_rows

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host", "fresh_parts")]

WIDTH = 96  # the tiny text encoder's cond width (Klein 4B: 7680)
SHARED = 2  # leading rows every prompt shares, as Klein's chat template prefix
#: Flux2's unet_config as ComfyUI's model_detection builds it, at a tiny size
TINY_FLUX2 = {
    "image_model": "flux2", "guidance_embed": False, "in_channels": 128, "out_channels": 128,
    "vec_in_dim": None, "context_in_dim": WIDTH, "hidden_size": 64, "mlp_ratio": 3.0,
    "num_heads": 2, "depth": 2, "depth_single_blocks": 1, "axes_dim": [8, 8, 8, 8],
    "theta": 2000, "patch_size": 1, "qkv_bias": False, "ops_bias": False,
    "global_modulation": True, "mlp_silu_act": True, "txt_ids_dims": [3],
    "default_ref_method": "index", "ref_index_scale": 10.0,
}
CHANNELS = 128


@pytest.fixture(autouse=True)
def _needs_flux2():
    supported_model("Flux2")


@pytest.fixture
def tiny():
    return build(host()[0].supported_models.Flux2, TINY_FLUX2, seed=1)


def network_for(model, seed=4, skip=SHARED, **options):
    return make_network(model.model.diffusion_model, "flux2-text", embed_dim=2 * WIDTH,
                        base_arch="flux2", seed=seed, trigger="cond-pooled", trigger_skip=skip,
                        **options)


@pytest.fixture(scope="module")
def klein_clip(unhype_pack):
    """Klein 4B's text path at a tiny size: ComfyUI's KleinTokenizer (the real Qwen tokenizer
    and chat template) and klein_te (Qwen3, layers 9/18/27 stacked), 32 wide, random weights."""
    import comfy.supported_models_base
    import comfy.text_encoders.flux as flux_te

    if not hasattr(flux_te, "klein_te"):
        pytest.skip("this ComfyUI has no Klein text encoder (comfy.text_encoders.flux.klein_te)")
    target = comfy.supported_models_base.ClipTarget(flux_te.KleinTokenizer,
                                                    flux_te.klein_te(model_type="qwen3_4b"))
    tiny = {"hidden_size": WIDTH // 3, "intermediate_size": 64, "num_hidden_layers": 28,
            "num_attention_heads": 2, "num_key_value_heads": 1}
    return tiny_text_encoder(target, {"qwen3_4b_model_config": tiny})


def prompt(seed, tokens=24):
    """A Klein-like conditioning entry: no pooled_output, a shared template prefix."""
    cond = torch.randn(1, tokens, WIDTH, generator=torch.Generator().manual_seed(seed))
    cond[0, :SHARED] = torch.randn(SHARED, WIDTH, generator=torch.Generator().manual_seed(77))
    return [[cond, {}]]


def reference_trigger(cond, skip=SHARED):
    """Independent of unhype/trigger.py: mean and max of the rows after the shared prefix."""
    rows = cond[0, skip:].double()
    return torch.cat([rows.sum(0) / rows.shape[0], rows.max(0).values]).float()[None]


def condition(conditioning, network):
    return node("UnHypeConditioner").execute(conditioning, network)[0]


def combined(*conditionings):
    return [entry for c in conditionings for entry in c]


def row_prompt(call, row, prompts):
    """Which of `prompts` row `row` of the call reads: Flux2 pads the text on the left to 512."""
    context = call["c_crossattn"][row]
    found = [p for p in prompts if torch.equal(context[-p[0][0].shape[1]:], p[0][0][0])]
    assert len(found) == 1
    return found[0]


def test_flux2_is_its_own_family_and_flux_stays_flux(tiny):
    ns = host()[0]
    models = sys.modules[f"{host()[1].__name__}.nodes.models"]
    assert models.model_family(tiny) == "flux2"
    assert models.model_family(build(ns.supported_models.Flux, TINY_FLUX)) == "flux"


def test_the_preset_takes_txt_in_and_the_text_streams_key_and_value(tiny):
    network = network_for(tiny)
    root = tiny.model.diffusion_model
    assert [t.name for t in network.targets] == [
        "txt_in", "double_blocks.0.txt_attn.qkv", "double_blocks.1.txt_attn.qkv"]
    assert network.targets[0].out_slice is None and network.targets[0].in_features == WIDTH
    for target in network.targets[1:]:
        assert target.out_slice == (64, 192)  # k and v of the 3 x 64 fused output
        assert root.get_submodule(target.name).out_features == 192


@pytest.mark.parametrize("cfg", [1.0, 4.0], ids=["distilled-cfg1", "base-cfg4"])
def test_each_row_of_one_batched_call_gets_its_own_prompts_lora(tiny, cfg):
    """Distilled Klein (CFG 1): two prompts combined into one call, no uncond pass; Klein base
    (CFG 4): positive and negative rows. "all rows": every row gets its prompt's LoRA."""
    network = network_for(tiny)
    first, second = prompt(1, tokens=24), prompt(2, tokens=40)
    if cfg == 1.0:
        positive, negative = condition(combined(first, second), network), condition(first, network)
    else:
        positive, negative = condition(first, network), condition(second, network)
    call = first_call(tiny, positive, negative, CHANNELS, cfg)
    assert call["x"].shape[0] == 2 and "unhype_embedding" in call["kwargs"]
    patched = node("UnHypeApplyDynamicLoRA").execute(tiny, network, 0.8, "all rows")[0]
    out = run_rows(tiny.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(tiny.model, call, slice(None), wrappers={})
    seen = set()
    for row in range(2):
        cond = row_prompt(call, row, (first, second))[0][0]
        seen.add(cond.shape[1])
        trigger = reference_trigger(cond)
        torch.testing.assert_close(call["kwargs"]["unhype_embedding"][row:row + 1, 1:], trigger,
                                   rtol=1e-5, atol=1e-6)
        reference = merged_reference(tiny.model, network, trigger, 0.8)
        expected = run_rows(reference, call, slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)
        assert (out[row] - base[row]).abs().max() > 1e-4
    assert seen == {24, 40}  # both prompts in the one call
    assert hooks_left(tiny.model) == []


def test_a_row_under_the_gate_is_the_base_model_bit_for_bit(tiny):
    core = host()[2]
    network = network_for(tiny)
    first, second = prompt(1), prompt(2)
    norms = [float(core.lora_norm(network.factors(reference_trigger(p[0][0])))[0])
             for p in (first, second)]
    assert abs(norms[0] - norms[1]) > 1e-6
    network.info.gate_threshold = sum(norms) / 2  # one prompt over it, one under
    passing = first if norms[0] > norms[1] else second
    positive = condition(combined(first, second), network)
    call = first_call(tiny, positive, condition(first, network), CHANNELS, 1.0)
    assert call["x"].shape[0] == 2
    patched = node("UnHypeApplyDynamicLoRA").execute(tiny, network, 1.0, "all rows")[0]
    out = run_rows(tiny.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(tiny.model, call, slice(None), wrappers={})
    for row in range(2):
        if row_prompt(call, row, (first, second)) is passing:
            reference = merged_reference(tiny.model, network,
                                         reference_trigger(passing[0][0]), 1.0)
            torch.testing.assert_close(out[row:row + 1],
                                       run_rows(reference, call, slice(row, row + 1)),
                                       **ROW_TOLERANCE)
            assert (out[row] - base[row]).abs().max() > 1e-4
        else:
            assert torch.equal(out[row], base[row])


def test_kleins_own_text_encoder_reaches_the_network_and_the_sampled_row(tiny, klein_clip):
    """The real tokenizer and template: the rows every prompt shares are the template's
    "<|im_start|>user\n"; Klein pads to 512 rows, which the trigger reads as the model does;
    UnHype Text Encode and Conditioner give the same trigger, and the sampled row (CFG 1) equals
    the merged-weight model for it."""
    core = host()[2]
    probes = [encode(klein_clip, text)[0][0][0] for text in core.trigger.PROBE_PROMPTS]
    skip = core.trigger.shared_rows(probes)
    assert skip == 3 and all(p.shape == (512, WIDTH) for p in probes)
    network = network_for(tiny, skip=skip)
    plain = encode(klein_clip, "a tench fish in a pond")
    assert plain[0][1].get("pooled_output") is None
    positive, report = ch.run_node(node("UnHypeTextEncode"), clip=klein_clip,
                                   text="a tench fish in a pond", unhype=network)
    assert "NOT SEEN" not in report
    trigger = reference_trigger(plain[0][0], skip)
    for conditioned in (positive, condition(plain, network)):
        torch.testing.assert_close(
            conditioned[0][1]["model_conds"]["unhype_embedding"].cond[:, 1:], trigger,
            rtol=1e-5, atol=1e-6)
    call = first_call(tiny, positive, positive, CHANNELS, 1.0)
    assert call["x"].shape[0] == 1  # CFG 1: no negative pass
    patched = node("UnHypeApplyDynamicLoRA").execute(tiny, network, 1.0, "all rows")[0]
    out = run_rows(tiny.model, call, slice(None), wrappers=patched.wrappers)
    expected = run_rows(merged_reference(tiny.model, network, trigger, 1.0), call, slice(0, 1))
    torch.testing.assert_close(out, expected, **ROW_TOLERANCE)
    assert (out - run_rows(tiny.model, call, slice(None), wrappers={})).abs().max() > 1e-4


def test_a_clip_pooled_network_is_refused_on_flux2(tiny):
    clip_pooled = make_network(tiny.model.diffusion_model, "flux2-text", embed_dim=768,
                               base_arch="flux2", seed=4)
    with pytest.raises(ValueError, match=r"reads CLIP pooled embeddings.*Flux\.2 Klein model's "
                                         r"conditioning has none.*cond-pooled trigger"):
        node("UnHypeApplyDynamicLoRA").execute(tiny, clip_pooled, 1.0, "all rows")
    with pytest.raises(ValueError, match=r"has no pooled_output.*cond-pooled trigger"):
        condition(prompt(1), clip_pooled)


def test_a_clip_pooled_network_is_refused_on_kleins_conditioning(tiny, klein_clip):
    clip_pooled = make_network(tiny.model.diffusion_model, "flux2-text", embed_dim=768,
                               base_arch="flux", seed=4)
    for read in (lambda: condition(encode(klein_clip, "red"), clip_pooled),
                   lambda: ch.run_node(node("UnHypeTextEncode"), clip=klein_clip, text="red",
                                       unhype=clip_pooled)):
        with pytest.raises(ValueError, match=r"(no pooled_output|no CLIP-L or CLIP-G).*"
                                             r"cond-pooled trigger"):
            read()


def test_the_trainers_esd_gradient_moves_the_erase_prediction_toward_its_target(tiny,
                                                                                 klein_clip):
    """Klein is distilled: x_t comes from the erase prompt alone at CFG 1, and the ESD target
    still reads the empty prompt's prediction (the concept's anchor here)."""
    check_esd_gradient_erases(tiny, klein_clip)


def test_the_trainer_resumes_exactly_and_saves_a_flux2_network_skipping_the_template(
        tiny, klein_clip, folders):
    network = check_trainer_resumes_exactly(tiny, klein_clip)
    assert (network.info.base_arch, network.info.target_preset) == ("flux2", "flux2-text")
    # the chat template's <|im_start|>user\n, measured by the Trainer from its probe prompts
    assert (network.config.trigger, network.config.trigger_skip) == ("cond-pooled", 3)


def sample(model, positive, negative):
    return sample_image(model, positive, negative, CHANNELS)


@pytest.mark.parametrize("key_format", ["comfyui", "kohya"])
def test_a_baked_lora_loads_every_key_and_samples_like_apply_dynamic_lora(tiny, loras, caplog,
                                                                          key_format):
    network = network_for(tiny)
    positive = condition(prompt(1), network)
    report, baked = bake_and_load(tiny, network, positive, caplog, key_format, strength=1.0)
    assert "norm cap: none" in report and "3 layers" in report
    for target in network.targets[1:]:  # the q rows of the fused qkv are untouched
        key = f"diffusion_model.{target.name}.weight"
        before = tiny.model.state_dict()[key]
        after = baked.patch_weight_to_device(key, return_weight=True)
        low, high = target.out_slice
        assert torch.equal(after[:low], before[:low])
        assert (after[low:high] - before[low:high]).abs().max() > 1e-3
    dynamic = node("UnHypeApplyDynamicLoRA").execute(tiny, network, 1.0, "all rows")[0]
    expected = sample(dynamic, positive, positive)
    got = sample(baked, positive, positive)
    torch.testing.assert_close(got, expected, **ROW_TOLERANCE)
    assert (got - sample(tiny, positive, positive)).abs().max() > 1e-3


def test_the_cap_of_txt_in_is_baked_exactly(tiny, loras):
    """txt_in reads the prompt's tokens: a cap that binds there is baked; the text stream's k/v
    read the step's modulated stream, so their cap is not (their LoRA is made small here, so
    the cap binds on txt_in alone)."""
    core = host()[2]
    network = network_for(tiny)
    with torch.no_grad():
        for head in network.module.generator.up_heads[1:]:  # the two txt_attn.qkv targets
            head[-1].weight.mul_(1e-3)
            head[-1].bias.mul_(1e-3)
    factors = network.factors(reference_trigger(prompt(1)[0][0]))
    txt_in = float(core.row_lora_delta(prompt(1)[0][0], factors["txt_in"],
                                       torch.tensor([1.0])).norm())
    network.config.norm_cap = txt_in / 2
    positive = condition(prompt(1), network)
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=1.0, save_name="capped", key_format="comfyui")
    assert "1 layers read the prompt's tokens" in report and "binds on 1" in report
    assert "2 layers read the image" in report
    baked = ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=tiny, lora_name=name,
                        strength_model=1.0)[0]
    dynamic = node("UnHypeApplyDynamicLoRA").execute(tiny, network, 1.0, "all rows")[0]
    torch.testing.assert_close(sample(baked, positive, positive),
                               sample(dynamic, positive, positive), **ROW_TOLERANCE)
