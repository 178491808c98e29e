"""Z-Image ("zimage", Turbo and Base), inference, bake and training: a tiny Z-Image built from
ComfyUI's own classes (ZImage, its Lumina2 NextDiT with Z-Image's modulation and caption padding)
with random weights, prompts encoded by CLIP Text Encode through ComfyUI's own Z-Image text path
(ZImageTokenizer with the real Qwen tokenizer and chat template, ZImageTEModel over a tiny random
Qwen3: no pooled vector, the template kept) and a cond-pooled network on the zimage-text preset.
Each row of one batched sampling call (Turbo: two prompts at CFG 1; Base: positive and negative at
CFG 4) equals an independent float64 merged-weight model for that row's prompt; a row under the gate
is the base model's bit for bit; a clip-pooled network, another family's network and the pixel-space
variant are refused; the Trainer's ESD gradient moves the erase prompt's prediction toward its
target, its predictions run prompts of other lengths apart, and a resumed run equals a straight one;
a baked file loads through ComfyUI's LoRA loader with every key and samples as Apply Dynamic LoRA
does."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    ROW_TOLERANCE,
    check_bake_samples_like_dynamic,
    check_esd_gradient_erases,
    check_network_file,
    check_prompts_of_two_lengths_run_apart,
    check_text_encode_reads_as_the_conditioner,
    check_trainer_resumes_exactly,
    check_unlike_lengths_predict_apart,
    condition,
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
from test_nodes_models import build, first_call, run_rows

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host", "fresh_parts")]

WIDTH = 32  # the tiny Qwen3's width, the DiT's cap_feat_dim (Qwen3-4B: 2560)
DIM = 256  # the DiT's width, the least Z-Image's 256-d timestep modulation takes (3840)
REFINERS = 2  # context_refiner blocks, as Z-Image's
#: ZImage's unet_config as ComfyUI's model_detection builds it for Z-Image, at a tiny size:
#: 8 heads of 32 = the three RoPE axes 8 + 12 + 12; captions and image padded to 32 tokens
TINY_ZIMAGE = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": DIM,
    "cap_feat_dim": WIDTH, "n_layers": 2, "n_refiner_layers": REFINERS, "n_heads": 8,
    "n_kv_heads": 8, "multiple_of": 16, "ffn_dim_multiplier": 8.0 / 3.0, "qk_norm": True,
    "axes_dims": [8, 12, 12], "axes_lens": [256, 64, 64], "rope_theta": 256.0,
    "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
}
CHANNELS = 16
TEMPLATE_START = 3  # "<|im_start|>user\n": the rows before the prompt, alike in every prompt
TEMPLATE_END = 5  # "<|im_end|>\n<|im_start|>assistant\n": the template's rows after it
#: two prompts of the same length: ZImage wraps c_crossattn in a CONDRegular and its token
#: count in a CONDConstant, so only conditionings of one length share a model call
POSITIVE, NEGATIVE = "a tench fish in a pond", "a red brick house by a lake"


@pytest.fixture(scope="module")
def zimage():
    return build(supported_model("ZImage"), TINY_ZIMAGE, seed=1)


def network_for(model, seed=5, **options):
    return make_network(model.model.diffusion_model, "zimage-text", embed_dim=2 * WIDTH,
                        base_arch="zimage", seed=seed, std=0.2, trigger="cond-pooled",
                        trigger_skip=TEMPLATE_START, **options)


@pytest.fixture
def network(zimage):
    return network_for(zimage)


@pytest.fixture(scope="module")
def qwen3(unhype_pack):
    """Z-Image's text path at a tiny size: ComfyUI's ZImageTokenizer (the real Qwen tokenizer
    and chat template) and ZImageTEModel (Qwen3, its second-to-last layer), 32 wide, random
    weights."""
    import comfy.supported_models_base
    import comfy.text_encoders.z_image as z_image_te

    target = comfy.supported_models_base.ClipTarget(z_image_te.ZImageTokenizer, z_image_te.te())
    tiny = {"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 2, "num_key_value_heads": 1}
    return tiny_text_encoder(target, {"qwen3_4b_model_config": tiny})


def text_tokens(clip, text) -> int:
    """How many tokens the prompt alone has, by the Qwen tokenizer without the template."""
    return len(clip.tokenizer.qwen3_4b.tokenizer(text)["input_ids"])


def reference_trigger(cond):
    """Independent of unhype/trigger.py: mean and max of the rows after the template's
    start."""
    rows = cond[0][0][0, TEMPLATE_START:].double()
    return torch.cat([rows.sum(0) / rows.shape[0], rows.max(0).values]).float()[None]


def models_module():
    return sys.modules[f"{host()[1].__name__}.nodes.models"]


def test_zimage_is_its_own_family_and_its_pixel_space_variant_is_refused(zimage):
    assert models_module().model_family(zimage) == "zimage"
    pixel = supported_model("ZImagePixelSpace")({"image_model": "zimage_pixel"})
    with pytest.raises(ValueError, match=r"this MODEL is ZImagePixelSpace, a variant of ZImage "
                                         r"that UnHype does not take: of its classes only ZImage "
                                         r"are Z-Image"):
        models_module().model_family(SimpleNamespace(model=SimpleNamespace(model_config=pixel)))


def test_the_preset_takes_the_caption_embedder_and_the_context_refiner(zimage, network):
    root = zimage.model.diffusion_model
    assert [t.name for t in network.targets] == [
        f"context_refiner.{b}.{layer}" for b in range(REFINERS)
        for layer in ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2",
                      "feed_forward.w3")] + ["cap_embedder.1"]
    assert all(t.out_slice is None for t in network.targets)
    assert network.targets[-1].in_features == WIDTH == root.cap_embedder[0].weight.shape[0]
    assert not any(name.startswith("layers.") for name in map(lambda t: t.name, network.targets))


def released_zimage() -> dict:
    """Z-Image's unet_config as ComfyUI's model_detection reads it from the released
    checkpoints: the one copy, the GPU check's."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check.ZIMAGE_DIT


def test_the_preset_on_the_real_size_model_is_eleven_layers_reading_qwen3_4b():
    """The released Z-Image's shapes (built on the meta device: no weights): what the docs say
    of its preset (11 layers, cap_embedder.1 2560 -> 3840)."""
    core = host()[2]
    config = supported_model("ZImage")(dict(released_zimage()))
    config.set_inference_dtype(torch.bfloat16, None)
    root = config.get_model({}, device=torch.device("meta")).diffusion_model
    targets = {t.name: (t.in_features, t.out_features)
               for t in core.targets_from_preset(root, "zimage-text")}
    assert len(targets) == 11 and targets["cap_embedder.1"] == (2560, 3840)
    assert targets["context_refiner.1.attention.qkv"] == (3840, 3 * 3840)
    assert targets["context_refiner.0.feed_forward.w2"] == (10240, 3840)
    assert core.families.family("zimage").pooled_width == 2560  # the trigger reads its rows


def test_the_text_encoder_keeps_the_template_whose_first_three_rows_are_skipped(qwen3):
    """What the cond-pooled trigger relies on, from ComfyUI's own text path: the rows the DiT
    reads are the whole chat template around the prompt's tokens, without a pooled vector;
    every prompt shares the template's first three rows ("<|im_start|>user\\n", the same states
    under Qwen3's causal attention), which a Z-Image network skips."""
    core = host()[2]
    conds = [encode(qwen3, text) for text in core.trigger.PROBE_PROMPTS]
    for cond, text in zip(conds, core.trigger.PROBE_PROMPTS):
        rows = TEMPLATE_START + text_tokens(qwen3, text) + TEMPLATE_END
        assert cond[0][0].shape == (1, rows, WIDTH)
        assert cond[0][1].get("pooled_output") is None
    assert core.trigger.shared_rows([c[0][0][0] for c in conds]) == TEMPLATE_START


def combined(*conditionings):
    return [entry for c in conditionings for entry in c]


def row_prompt(call, row, conds):
    """Which of `conds` (equal in length) row `row` of the call reads."""
    found = [i for i, c in enumerate(conds) if torch.equal(call["c_crossattn"][row], c[0][0][0])]
    assert len(found) == 1
    return found[0]


def batched_call(zimage, qwen3, network, mode, cfg):
    """One sampling step with two prompts in one model call: Turbo's CFG 1 has them both in the
    positive (no uncond pass), Base's CFG 4 the positive and the negative."""
    conds = [encode(qwen3, POSITIVE), encode(qwen3, NEGATIVE)]
    if cfg == 1.0:
        positive, negative = condition(network, combined(*conds)), condition(network, conds[0])
    else:
        positive, negative = condition(network, conds[0]), condition(network, conds[1])
    call = first_call(zimage, positive, negative, CHANNELS, cfg)
    assert call["x"].shape[0] == 2
    triggers = [reference_trigger(c) for c in conds]
    rows = [row_prompt(call, row, conds) for row in range(2)]
    assert sorted(rows) == [0, 1]
    for row, prompt in enumerate(rows):
        torch.testing.assert_close(call["kwargs"]["unhype_embedding"][row:row + 1, 1:],
                                   triggers[prompt], rtol=1e-5, atol=1e-6)
    patched = node("UnHypeApplyDynamicLoRA").execute(zimage, network, 0.8, mode)[0]
    out = run_rows(zimage.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(zimage.model, call, slice(None), wrappers={})
    assert hooks_left(zimage.model) == []
    return call, [triggers[p] for p in rows], out, base


@pytest.mark.parametrize("cfg, mode", [(1.0, "all rows"), (4.0, "all rows"),
                                       (4.0, "conditional only")],
                         ids=["turbo-cfg1", "base-cfg4", "base-cfg4-conditional-only"])
def test_every_row_of_one_batched_call_equals_its_prompts_merged_weights(zimage, qwen3,
                                                                         network, cfg, mode):
    call, triggers, out, base = batched_call(zimage, qwen3, network, mode, cfg)
    assert (triggers[0] - triggers[1]).abs().max() > 1e-2
    for row, chunk in enumerate(call["cond_or_uncond"]):
        if mode == "conditional only" and chunk == 1:
            assert torch.equal(out[row], base[row])
            continue
        expected = run_rows(merged_reference(zimage.model, network, triggers[row], 0.8), call,
                            slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)
        error, effect = (out[row] - expected[0]).abs().max(), (out[row] - base[row]).abs().max()
        assert effect > 1e-3 and effect > 100 * error


def test_prompts_of_different_lengths_run_as_two_calls_each_with_its_own_lora(zimage, qwen3,
                                                                            network):
    """A positive and a negative of different lengths do not share a model call (CONDRegular
    context, CONDConstant token count): ComfyUI runs two, and each row gets its prompt's LoRA."""
    check_prompts_of_two_lengths_run_apart(
        zimage, network, [encode(qwen3, POSITIVE), encode(qwen3, "red")],
        torch.zeros(1, CHANNELS, 8, 8), reference_trigger)


def test_unhype_text_encode_gives_the_conditioners_trigger(qwen3, network):
    torch.testing.assert_close(check_text_encode_reads_as_the_conditioner(qwen3, network,
                                                                          POSITIVE),
                               reference_trigger(encode(qwen3, POSITIVE)), rtol=1e-5, atol=1e-6)


def test_turbos_zeroed_out_negative_passes_the_conditioner_untouched(qwen3, network):
    """ComfyUI's Turbo template feeds ConditioningZeroOut as the negative: no prompt to read."""
    zeroed = ch.run_node(host()[0].nodes.ConditioningZeroOut,
                         conditioning=encode(qwen3, POSITIVE))[0]
    out = node("UnHypeConditioner").execute(zeroed, network)
    assert "entry 1: all zero (ConditioningZeroOut)" in out.ui["text"][0]


def test_a_row_under_the_gate_is_the_base_model_bit_for_bit(zimage, qwen3, network):
    core = host()[2]
    triggers = [reference_trigger(encode(qwen3, text)) for text in (POSITIVE, NEGATIVE)]
    norms = core.lora_norm(network.factors(torch.cat(triggers)))
    assert abs(float(norms[0] - norms[1])) > 1e-6
    network.info.gate_threshold = float(norms.sum() / 2)
    call, triggers, out, base = batched_call(zimage, qwen3, network, "all rows", cfg=4.0)
    gated = [row for row in range(2) if torch.equal(out[row], base[row])]
    assert len(gated) == 1
    passing = 1 - gated[0]
    expected = run_rows(merged_reference(zimage.model, network, triggers[passing], 0.8), call,
                        slice(passing, passing + 1))
    torch.testing.assert_close(out[passing:passing + 1], expected, **ROW_TOLERANCE)
    assert (out[passing] - base[passing]).abs().max() > 1e-4
    assert core.lora_norm(network.factors(triggers[gated[0]])) < network.info.gate_threshold


def test_a_clip_pooled_network_is_refused_on_zimage(zimage, qwen3):
    clip_pooled = make_network(zimage.model.diffusion_model, "zimage-text", embed_dim=768,
                               base_arch="zimage", seed=4)
    with pytest.raises(ValueError, match=r"reads CLIP pooled embeddings.*Z-Image model's "
                                         r"conditioning has none \(its text encoder is "
                                         r"Qwen3-4B\).*cond-pooled trigger"):
        node("UnHypeApplyDynamicLoRA").execute(zimage, clip_pooled, 1.0, "all rows")
    with pytest.raises(ValueError, match=r"has no pooled_output.*cond-pooled trigger"):
        condition(clip_pooled, encode(qwen3, POSITIVE))


def test_a_network_of_another_family_is_refused_naming_both(zimage):
    qwen_network = make_network(zimage.model.diffusion_model, "zimage-text",
                                embed_dim=2 * WIDTH, base_arch="qwenimage", seed=4,
                                trigger="cond-pooled")
    with pytest.raises(ValueError, match=r"was made for Qwen-Image \(qwenimage; .*this model is "
                                         r"Z-Image \(zimage; text encoder Qwen3-4B\): use a "
                                         r"network made for Z-Image"):
        node("UnHypeApplyDynamicLoRA").execute(zimage, qwen_network, 1.0, "all rows")


def test_the_trainers_esd_gradient_moves_the_erase_prediction_toward_its_target(zimage, qwen3):
    """Turbo is distilled: x_t comes from the erase prompt alone at CFG 1, and the ESD target
    still reads the empty prompt's prediction (the concept's anchor here)."""
    check_esd_gradient_erases(zimage, qwen3)


def test_the_trainers_predictions_run_prompts_of_different_lengths_as_calls_of_their_own(
        zimage, qwen3):
    check_unlike_lengths_predict_apart(zimage, qwen3, [POSITIVE, "red"])


def test_the_trainer_resumes_exactly_and_saves_a_zimage_network_skipping_the_template(
        zimage, qwen3, folders):
    network = check_trainer_resumes_exactly(zimage, qwen3)
    assert (network.info.base_arch, network.info.target_preset) == ("zimage", "zimage-text")
    assert (network.config.trigger, network.config.trigger_skip) == ("cond-pooled",
                                                                     TEMPLATE_START)


def sample(model, positive, negative):
    return sample_image(model, positive, negative, CHANNELS)


@pytest.mark.parametrize("key_format", ["comfyui", "kohya"])
def test_a_baked_lora_loads_every_key_and_samples_like_apply_dynamic_lora(zimage, qwen3,
                                                                          network, loras,
                                                                          caplog, key_format):
    positive = condition(network, encode(qwen3, POSITIVE))
    negative = condition(network, encode(qwen3, NEGATIVE))
    report = check_bake_samples_like_dynamic(zimage, network, positive, negative, caplog,
                                             key_format, sample)
    assert "norm cap: none" in report


def test_no_cap_is_baked_as_every_target_reads_the_prompt_through_the_model(zimage, qwen3,
                                                                            loras, caplog):
    """cap_embedder.1 reads the RMSNorm before it, the refiner the caption tokens after
    cap_embedder: layers of the model the bake does not run, so no cap is baked, and where it
    does not bind the file is Apply Dynamic LoRA exactly."""
    network = network_for(zimage, seed=6, norm_cap=1e9)  # a cap that never binds
    positive = condition(network, encode(qwen3, POSITIVE))
    report = check_bake_samples_like_dynamic(zimage, network, positive, positive, caplog,
                                             "comfyui", sample, strength=1.0)
    assert (f"{len(network.targets)} layers read the prompt through the model's own text "
            "embedding") in report
    assert "read the image" not in report and "read the prompt's tokens" not in report


def test_a_zimage_network_file_declares_zimage_and_loads_back(qwen3, network, tmp_path):
    loaded, _ = check_network_file(network, encode(qwen3, POSITIVE),
                                   tmp_path / "zimage.safetensors", "z-image/unhype",
                                   "Apache-2.0")
    assert (loaded.config.trigger, loaded.config.trigger_skip) == ("cond-pooled", TEMPLATE_START)
