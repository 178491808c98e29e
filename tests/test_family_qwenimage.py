"""Qwen-Image ("qwenimage"), inference, bake and training: a tiny Qwen-Image built from ComfyUI's
own classes (QwenImage, its QwenImageTransformer2DModel) with random weights, prompts encoded by
CLIP Text Encode through ComfyUI's own Qwen-Image text path (QwenImageTokenizer with the real
Qwen2.5 tokenizer and chat template, QwenImageTEModel over a tiny random Qwen2.5-VL: no pooled
vector, the template stripped) and a cond-pooled network on the qwenimage-text preset. Each row of
one batched sampling call with CFG and a negative prompt equals an independent float64 merged-weight
model for that row's prompt; a row under the gate is the base model's bit for bit; a clip-pooled
network is refused; the Trainer's ESD gradient moves the erase prompt's prediction toward its target
and a resumed run equals a straight one; a baked file loads through ComfyUI's LoRA loader with every
key and samples as Apply Dynamic LoRA does."""

import sys

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
    supported_model,
    tiny_text_encoder,
)
from test_family_wan import first_call, sample, video_latent
from test_nodes_models import build, run_rows

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host", "fresh_parts")]

WIDTH = 32  # the tiny text encoder's width, the DiT's joint_attention_dim (Qwen2.5-VL-7B: 3584)
BLOCKS = 2  # transformer blocks (Qwen-Image: 60)
#: QwenImage's unet_config as ComfyUI's model_detection builds it, at a tiny size: 16 latent
#: channels in 2x2 patches (64), heads of 16 = the three RoPE axes 4 + 6 + 6
TINY_QWEN = {
    "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": BLOCKS,
    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": WIDTH,
    "axes_dims_rope": (4, 6, 6),
}
TEMPLATE_END = 5  # "<|im_end|>\n<|im_start|>assistant\n": the template's rows after the prompt
#: two prompts of the same length (12 rows): QwenImage wraps c_crossattn in a CONDRegular, so
#: only conditionings of one shape share a model call
POSITIVE, NEGATIVE = "a tench fish in a pond", "a red brick house by a lake"


@pytest.fixture(scope="module")
def qwen():
    return build(supported_model("QwenImage"), TINY_QWEN, seed=1)


def network_for(model, seed=5, **options):
    return make_network(model.model.diffusion_model, "qwenimage-text", embed_dim=2 * WIDTH,
                        base_arch="qwenimage", seed=seed, std=0.2, trigger="cond-pooled",
                        trigger_skip=0, **options)


@pytest.fixture
def network(qwen):
    return network_for(qwen)


@pytest.fixture(scope="module")
def qwen_clip(unhype_pack):
    """Qwen-Image's text path at a tiny size: ComfyUI's QwenImageTokenizer (the real Qwen2.5
    tokenizer and chat template) and QwenImageTEModel (Qwen2.5-VL, last layer), 32 wide, random
    weights. Its vision tower, which a text prompt never reaches, is built tiny too (ComfyUI
    builds it at its full 0.6B size whatever the config says)."""
    import comfy.supported_models_base
    import comfy.text_encoders.qwen_image as qwen_te
    import comfy.text_encoders.qwen_vl as qwen_vl

    full = qwen_vl.Qwen2VLVisionTransformer
    tiny_vision = {"hidden_size": 32, "intermediate_size": 32, "num_heads": 2, "num_layers": 1}
    target = comfy.supported_models_base.ClipTarget(qwen_te.QwenImageTokenizer, qwen_te.te())
    config = {"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(qwen_vl, "Qwen2VLVisionTransformer",
                      lambda **kw: full(**{**kw, **tiny_vision}))
        return tiny_text_encoder(target, {"qwen25_7b_model_config": config})


def text_tokens(clip, text) -> int:
    """How many tokens the prompt alone has, by the Qwen2.5 tokenizer without the template."""
    return len(clip.tokenizer.qwen25_7b.tokenizer(text)["input_ids"])


def reference_trigger(cond):
    """Independent of unhype/trigger.py: mean and max of every row (the template is stripped,
    so the rows start at the prompt's first token and no row is skipped)."""
    rows = cond[0][0][0].double()
    return torch.cat([rows.sum(0) / rows.shape[0], rows.max(0).values]).float()[None]


def models_module():
    return sys.modules[f"{host()[1].__name__}.nodes.models"]


def test_qwenimage_is_its_own_family(qwen):
    assert models_module().model_family(qwen) == "qwenimage"


def test_the_preset_takes_txt_in_and_the_text_streams_key_and_value(qwen, network):
    root = qwen.model.diffusion_model
    assert [t.name for t in network.targets] == ["txt_in"] + [
        f"transformer_blocks.{b}.attn.add_{p}_proj" for b in range(BLOCKS) for p in "kv"]
    assert all(t.out_slice is None for t in network.targets)
    assert network.targets[0].in_features == WIDTH == root.txt_norm.weight.shape[0]
    assert {t.in_features for t in network.targets[1:]} == {root.inner_dim}  # the text stream


def test_the_text_encoder_strips_the_template_and_no_row_is_skipped(qwen_clip):
    """What the cond-pooled trigger relies on, from ComfyUI's own text path: the rows the DiT
    reads are the prompt's tokens and the template's last five, without a pooled vector or an
    attention mask; they share no leading row, so a Qwen-Image network skips none."""
    core = host()[2]
    conds = [encode(qwen_clip, text) for text in core.trigger.PROBE_PROMPTS]
    for cond, text in zip(conds, core.trigger.PROBE_PROMPTS):
        assert cond[0][0].shape == (1, text_tokens(qwen_clip, text) + TEMPLATE_END, WIDTH)
        assert cond[0][1].get("pooled_output") is None and "attention_mask" not in cond[0][1]
    assert core.trigger.shared_rows([c[0][0][0] for c in conds]) == 0


def batched_call(qwen, qwen_clip, network, mode, cfg=4.0):
    """One sampling step with CFG: the cond and uncond rows of two prompts in one model call."""
    positive, negative = encode(qwen_clip, POSITIVE), encode(qwen_clip, NEGATIVE)
    call = first_call(qwen, condition(network, positive), condition(network, negative), cfg=cfg)
    assert call["x"].shape[0] == 2 and sorted(call["cond_or_uncond"]) == [0, 1]
    triggers = {0: reference_trigger(positive), 1: reference_trigger(negative)}
    for row, chunk in enumerate(call["cond_or_uncond"]):
        torch.testing.assert_close(call["kwargs"]["unhype_embedding"][row:row + 1, 1:],
                                   triggers[chunk], rtol=1e-5, atol=1e-6)
    patched = node("UnHypeApplyDynamicLoRA").execute(qwen, network, 0.8, mode)[0]
    out = run_rows(qwen.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(qwen.model, call, slice(None), wrappers={})
    assert hooks_left(qwen.model) == []
    return call, triggers, out, base


@pytest.mark.parametrize("mode", ["all rows", "conditional only"])
def test_every_row_of_a_cfg_batch_equals_its_prompts_merged_weights(qwen, qwen_clip, network,
                                                                    mode):
    call, triggers, out, base = batched_call(qwen, qwen_clip, network, mode)
    assert (triggers[0] - triggers[1]).abs().max() > 1e-2
    for row, chunk in enumerate(call["cond_or_uncond"]):
        if mode == "conditional only" and chunk == 1:
            assert torch.equal(out[row], base[row])
            continue
        expected = run_rows(merged_reference(qwen.model, network, triggers[chunk], 0.8), call,
                            slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)
        error, effect = (out[row] - expected[0]).abs().max(), (out[row] - base[row]).abs().max()
        assert effect > 1e-3 and effect > 100 * error


def test_prompts_of_different_lengths_run_as_two_calls_each_with_its_own_lora(qwen, qwen_clip,
                                                                            network):
    """QwenImage's CONDRegular context does not pad: ComfyUI runs a positive and a negative of
    different lengths as two model calls, and each call's row still gets its prompt's LoRA."""
    check_prompts_of_two_lengths_run_apart(
        qwen, network, [encode(qwen_clip, POSITIVE), encode(qwen_clip, "red")], video_latent(),
        reference_trigger)


def test_the_trainers_predictions_run_prompts_of_different_lengths_as_calls_of_their_own(
        qwen, qwen_clip):
    check_unlike_lengths_predict_apart(qwen, qwen_clip, [POSITIVE, "red"])


def test_unhype_text_encode_gives_the_conditioners_trigger(qwen_clip, network):
    check_text_encode_reads_as_the_conditioner(qwen_clip, network, POSITIVE)


def test_a_row_under_the_gate_is_the_base_model_bit_for_bit(qwen, qwen_clip, network):
    core = host()[2]
    triggers = [reference_trigger(encode(qwen_clip, text)) for text in (POSITIVE, NEGATIVE)]
    norms = core.lora_norm(network.factors(torch.cat(triggers)))
    assert abs(float(norms[0] - norms[1])) > 1e-6
    gated_chunk = int(norms.argmin())
    network.info.gate_threshold = float(norms.sum() / 2)
    call, triggers, out, base = batched_call(qwen, qwen_clip, network, "all rows")
    for row, chunk in enumerate(call["cond_or_uncond"]):
        if chunk == gated_chunk:
            assert torch.equal(out[row], base[row])
        else:
            expected = run_rows(merged_reference(qwen.model, network, triggers[chunk], 0.8),
                                call, slice(row, row + 1))
            torch.testing.assert_close(out[row:row + 1], expected, **ROW_TOLERANCE)
            assert (out[row] - base[row]).abs().max() > 1e-4


def test_a_clip_pooled_network_is_refused_on_qwenimage(qwen, qwen_clip):
    clip_pooled = make_network(qwen.model.diffusion_model, "qwenimage-text", embed_dim=768,
                               base_arch="qwenimage", seed=4)
    with pytest.raises(ValueError, match=r"reads CLIP pooled embeddings.*Qwen-Image model's "
                                         r"conditioning has none \(its text encoder is "
                                         r"Qwen2\.5-VL-7B\).*cond-pooled trigger"):
        node("UnHypeApplyDynamicLoRA").execute(qwen, clip_pooled, 1.0, "all rows")
    with pytest.raises(ValueError, match=r"has no pooled_output.*cond-pooled trigger"):
        condition(clip_pooled, encode(qwen_clip, POSITIVE))
    with pytest.raises(ValueError, match=r"no CLIP-L or CLIP-G tokenizer"):
        ch.run_node(node("UnHypeTextEncode"), clip=qwen_clip, text="red", unhype=clip_pooled)


def test_the_trainers_esd_gradient_moves_the_erase_prediction_toward_its_target(qwen,
                                                                                 qwen_clip):
    check_esd_gradient_erases(qwen, qwen_clip)


def test_the_trainer_resumes_exactly_and_saves_a_cond_pooled_qwenimage_network(qwen, qwen_clip,
                                                                              folders):
    network = check_trainer_resumes_exactly(qwen, qwen_clip)
    assert (network.info.base_arch, network.info.target_preset) == ("qwenimage",
                                                                    "qwenimage-text")
    assert (network.config.trigger, network.config.trigger_skip) == ("cond-pooled", 0)
    assert network.config.embed_dim == 2 * WIDTH


@pytest.mark.parametrize("key_format", ["comfyui", "kohya"])
def test_a_baked_lora_loads_every_key_and_samples_like_apply_dynamic_lora(qwen, qwen_clip,
                                                                          network, loras,
                                                                          caplog, key_format):
    positive = condition(network, encode(qwen_clip, POSITIVE))
    negative = condition(network, encode(qwen_clip, NEGATIVE))
    report = check_bake_samples_like_dynamic(qwen, network, positive, negative, caplog,
                                             key_format, sample)
    assert "norm cap: none" in report


def test_the_cap_of_txt_in_is_not_baked_as_it_reads_the_prompt_through_txt_norm(qwen, qwen_clip,
                                                                                loras):
    """txt_in reads txt_norm(conditioning), which the bake does not run; the text stream's k/v
    read the step's modulated stream: no cap is baked, and where it does not bind the file is
    Apply Dynamic LoRA exactly."""
    network = network_for(qwen, seed=6, norm_cap=1e9)  # a cap that never binds
    positive = condition(network, encode(qwen_clip, POSITIVE))
    name, report = ch.run_node(node("UnHypeBakeLoRA"), conditioning=positive, unhype=network,
                               strength=1.0, save_name="qwen", key_format="comfyui")
    assert "1 layers read the prompt through the model's own text embedding" in report
    assert f"{2 * BLOCKS} layers read the image" in report
    assert "read the prompt's tokens" not in report
    dynamic = node("UnHypeApplyDynamicLoRA").execute(qwen, network, 1.0, "all rows")[0]
    baked = ch.run_node(host()[0].nodes.LoraLoaderModelOnly, model=qwen, lora_name=name,
                        strength_model=1.0)[0]
    torch.testing.assert_close(sample(baked, positive, positive),
                               sample(dynamic, positive, positive), **ROW_TOLERANCE)


def test_a_qwenimage_network_file_declares_qwenimage_and_loads_back(qwen_clip, network,
                                                                     tmp_path):
    loaded, _ = check_network_file(network, encode(qwen_clip, POSITIVE),
                                   tmp_path / "qwen.safetensors", "qwen-image/unhype",
                                   "Apache-2.0")
    assert (loaded.config.trigger, loaded.config.trigger_skip) == ("cond-pooled", 0)
