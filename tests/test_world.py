"""The CPU proving-ground world: data, tokenizer, committed weights, judges, sampler, names."""

import os
import time

import pytest
import torch
from torch import nn

from unhype.world import WEIGHTS_DIR, load_world
from unhype.world.data import make_dataset, to_float
from unhype.world.denoiser import WorldDenoiser
from unhype.world.tiny_clip import trained_token_ids
from unhype.world.tiny_unet import cross_attention_names
from unhype.world.vocabulary import COLOURS, PARAPHRASES, SHAPES, TEMPLATES


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def held_out():
    return make_dataset(160, seed=4242)


def test_dataset_is_deterministic_and_balanced_enough():
    a, b, c = make_dataset(64, seed=7), make_dataset(64, seed=7), make_dataset(64, seed=8)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert len(COLOURS) >= 8 and len(SHAPES) >= 5
    big = make_dataset(400, seed=1)
    assert set(big.colour.tolist()) == set(range(len(COLOURS)))
    assert set(big.shape.tolist()) == set(range(len(SHAPES)))


def test_paraphrases_are_held_out_but_use_only_trained_tokens(world):
    assert not set(PARAPHRASES) & set(TEMPLATES)
    trained = set(trained_token_ids(world.clip.tokenizer).tolist())
    texts = [
        p.format(colour=c.word, shape=s.word) for p in PARAPHRASES for c in COLOURS for s in SHAPES
    ]
    assert set(world.clip.tokenize(texts).unique().tolist()) <= trained


def test_tokenizer_works_offline(world):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tokens = world.clip.tokenize(["a photo of a crimson circle"])
    assert tokens.shape == (1, 16)
    assert tokens[0, 0] == world.clip.tokenizer.sot_token_id
    assert world.clip.tokenizer.eot_token_id in tokens[0].tolist()


def test_pooled_is_final_layer_norm_state_at_end_of_text(world):
    prompts = ["a red circle", "a photo of a violet hoop on a dark background", ""]
    states, pooled = world.clip.text_states(prompts)
    assert states.shape == (3, 16, 128) and pooled.shape == (3, 128)
    end = world.clip.tokenize(prompts).argmax(-1)
    assert torch.equal(pooled, states[torch.arange(3), end])
    # open_clip's own text path projects exactly that vector.
    projected = world.clip.model.encode_text(world.clip.tokenize(prompts))
    torch.testing.assert_close(pooled @ world.clip.model.text_projection, projected)


def test_judges_are_accurate_on_real_renders(world, held_out):
    images = to_float(held_out.images)
    judge = world.judge
    assert (judge.pixel_colour(images) == held_out.colour).float().mean() >= 0.98
    assert (judge.clip_colour(images) == held_out.colour).float().mean() >= 0.95
    assert (judge.clip_shape(images) == held_out.shape).float().mean() >= 0.85
    assert (judge.pixel_shape(images) == held_out.shape).float().mean() >= 0.98


def test_pixel_shape_judge_is_colour_blind_where_clip_is_not(world, held_out):
    """A grey copy of a render keeps its shape: the pixel judge still sees it, the CLIP judge
    (trained on saturated shapes only) mostly does not; why "shape kept" uses the pixel judge."""
    grey = to_float(held_out.images).mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    pale = 0.15 + 0.3 * grey  # dim contrast as well, as erased pictures come out
    judge = world.judge
    for images in (grey, pale):
        assert (judge.pixel_shape(images) == held_out.shape).float().mean() >= 0.95
    assert (judge.clip_shape(pale) == held_out.shape).float().mean() <= 0.5


def test_committed_weights_are_small_safetensors_and_load_fast():
    files = ["tiny_clip.safetensors", "tiny_unet.safetensors"]
    assert sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in files) < 10_000_000
    pickles = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
    assert not [f for f in os.listdir(WEIGHTS_DIR) if f.endswith(pickles)]
    start = time.process_time()  # CPU time: the work done, the same on a busy machine
    world = load_world()
    assert time.process_time() - start < 15  # ~1 s
    assert not any(p.requires_grad for p in world.unet.parameters())


def test_cross_attention_names_match_comfyui_sd(world):
    names = cross_attention_names(world.unet)
    assert len(names) == 10
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k" in names
    assert "middle_block.1.transformer_blocks.0.attn2.to_v" in names
    for name in names:
        layer = world.denoiser.lora_root.get_submodule(name)
        assert type(layer) is nn.Linear and layer.in_features == 128
    out = world.unet.get_submodule("output_blocks.2.1.transformer_blocks.0.attn2.to_out.0")
    assert type(out) is nn.Linear
    assert world.unet.get_submodule("input_blocks.1.1.transformer_blocks.0.attn1.to_q")


def test_sampling_is_deterministic_and_reports_cond_rows(world):
    prompts = ["a red circle", "a blue square"]
    seen = []

    def unet_context(rows, cond_mask):
        seen.append((rows, cond_mask.tolist()))
        return torch.no_grad()

    def sample(**kwargs):
        return world.denoiser.sample(prompts, torch.Generator().manual_seed(3), steps=3, **kwargs)

    first = sample(unet_context=unet_context)
    assert first.shape == (2, 3, 32, 32) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, sample())
    assert len(seen) == 3
    assert seen[0] == (prompts + ["", ""], [True, True, False, False])


def test_sample_xt_and_predict_are_hookable(world):
    denoiser = WorldDenoiser(world.unet, world.clip, xt_steps=6)
    x_t, t = denoiser.sample_xt(["a red circle"], 3, torch.Generator().manual_seed(0))
    assert x_t.shape == (3, 3, 32, 32) and t.dtype == torch.int64
    assert ((0 <= t) & (t < 1000)).all()
    assert denoiser.embed(["a red circle"]).shape == (1, 128)

    shift = torch.zeros(96, requires_grad=True)
    layer = denoiser.lora_root.get_submodule("middle_block.1.transformer_blocks.0.attn2.to_k")
    handle = layer.register_forward_hook(lambda module, inputs, output: output + shift)
    try:
        eps = denoiser.predict(x_t, t, ["a red circle", "a blue ring", ""])
        eps.square().mean().backward()
    finally:
        handle.remove()
    assert eps.shape == x_t.shape
    assert shift.grad is not None and shift.grad.abs().sum() > 0
