"""UnHype Proving Ground in a real ComfyUI (in-process, CPU): the world as MODEL, CLIP and VAE.

Each output must reproduce the world of unhype/world/ (the schedule, the text states and pooled
vector, the denoised prediction, the image range), the UnHype trainer must see it as the
"proving-ground" family, and ComfyUI's own KSampler must paint the prompted colour.
"""

import re
import sys

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import host, node
from unhype.discovery import FLOOR_VERSION

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

PROMPTS = ["", "a red circle", "a photo of a blue square", "the ring is yellow",
           "one teal cross in the picture"]


def module(name):
    return sys.modules[f"{host()[1].__name__}.nodes.{name}"]


@pytest.fixture(scope="module")
def world():
    from unhype.world import load_world

    torch.manual_seed(0)
    return load_world()


@pytest.fixture(scope="module")
def loaded():
    """(MODEL, CLIP, VAE) from the node; a ComfyUI that lacks a piece skips, saying which."""
    try:
        return ch.run_node(node("UnHypeProvingGround"))
    except module("proving_ground").ProvingGroundError as error:
        pytest.skip(str(error))


def encode(clip, text):
    nodes = host()[0].nodes
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def test_model_sampling_is_the_world_schedule(loaded):
    from unhype.world.tiny_unet import TRAIN_STEPS, NoiseSchedule

    sampling = loaded[0].model.model_sampling
    world_alphas = NoiseSchedule().alphas_cumprod.double()
    assert sampling.sigmas.shape == (TRAIN_STEPS,)
    comfy_alphas = 1.0 / (1.0 + sampling.sigmas.double() ** 2)
    torch.testing.assert_close(comfy_alphas, world_alphas, rtol=1e-6, atol=1e-7)
    # sigma = sqrt((1 - a) / a): near t = 0, 1 - a ~ 1e-4 carries the float32 rounding of a
    world_sigmas = ((1 - world_alphas) / world_alphas).sqrt()
    torch.testing.assert_close(sampling.sigmas.double(), world_sigmas, rtol=1e-4, atol=0)
    assert isinstance(sampling, host()[0].comfy.model_sampling.EPS)


def test_empty_latent_image_gives_the_world_image_latent(loaded):
    """EmptyLatentImage 32x32 (made for /8 VAEs) becomes a 3x32x32 pixel latent for KSampler."""
    ns = host()[0]
    latent = ns.nodes.EmptyLatentImage().generate(32, 32, 2)[0]
    fixed = ns.sample.fix_empty_latent_channels(loaded[0], latent["samples"],
                                                latent.get("downscale_ratio_spacial"))
    assert fixed.shape == (2, 3, 32, 32)


def test_clip_encode_equals_the_world_clip(loaded, world):
    clip = loaded[1]
    for prompt in PROMPTS:
        (cond, options), = encode(clip, prompt)
        states, pooled = world.clip.text_states([prompt])
        assert cond.shape == states.shape == (1, 16, 128), prompt
        torch.testing.assert_close(cond, states, rtol=0, atol=1e-5, msg=prompt)
        torch.testing.assert_close(options["pooled_output"], pooled, rtol=0, atol=1e-5,
                                   msg=prompt)
        torch.testing.assert_close(options["pooled_output"], world.denoiser.embed([prompt]),
                                   rtol=0, atol=1e-5, msg=prompt)


def test_apply_model_is_the_world_unet(loaded, world):
    """ComfyUI's denoised estimate equals x0 from the world UNet's eps at the same noise level."""
    from unhype.world.tiny_unet import NoiseSchedule

    model, clip = loaded[0], loaded[1]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    noise = torch.randn(3, 3, 32, 32, generator=gen)
    t = torch.tensor([20, 400, 990])
    schedule = NoiseSchedule()
    x_t = schedule.add_noise(x0, noise, t)
    prompts = PROMPTS[1:4]
    with torch.no_grad():
        eps = world.unet(x_t, t, world.clip.text_states(prompts)[0])
    alphas = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = (x_t - (1 - alphas).sqrt() * eps) / alphas.sqrt()
    sigma = model.model.model_sampling.sigmas[t]
    context = torch.cat([encode(clip, p)[0][0] for p in prompts])
    with torch.no_grad():  # ComfyUI's x = x0 + sigma * eps is the world's x_t * sqrt(1 + sigma^2)
        denoised = model.model.apply_model(x_t * (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt(), sigma,
                                           c_crossattn=context)
    torch.testing.assert_close(denoised, expected, rtol=0, atol=1e-4)


def test_vae_is_the_world_image_range(loaded):
    vae = loaded[2]
    latent = torch.linspace(-1.5, 1.5, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    images = vae.decode(latent)
    assert images.shape == (2, 32, 32, 3)
    torch.testing.assert_close(images, ((latent + 1) / 2).clamp(0, 1).movedim(1, -1))
    inside = ((latent + 1) / 2).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(vae.encode(inside), latent.clamp(-1, 1))


def test_trainer_sees_the_proving_ground_family(loaded, world):
    from unhype.world.tiny_unet import cross_attention_names

    denoiser_module = module("training.denoiser")
    model, clip = loaded[0], loaded[1]
    assert denoiser_module.model_family(model) == "proving-ground"
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = denoiser_module.ComfyDenoiser(model, clip, sampling_steps=10)
        assert denoiser.latent_shape == (3, 32, 32)  # resolution 32 px, no VAE downscaling
        preset = host()[2].families.family(denoiser.family).target_preset
        targets = host()[2].targets_from_preset(denoiser.lora_root, preset)
        assert [t.name for t in targets] == cross_attention_names(world.unet)
        torch.testing.assert_close(denoiser.embed(["a red circle"]),
                                   world.denoiser.embed(["a red circle"]), rtol=0, atol=1e-5)
        x_t, sigma = denoiser.sample_xt(["a red circle"], 2, torch.Generator().manual_seed(0))
        assert x_t.shape == (2, 3, 32, 32) and sigma.shape == (2,)
        predicted = denoiser.predict(x_t, sigma, ["a red circle", "a blue ring"])
        assert predicted.shape == x_t.shape and torch.isfinite(predicted).all()


@pytest.mark.parametrize("piece", ["pixel-space VAE", "spatial ratio of empty latents"])
def test_an_older_comfyui_gets_a_clear_error(monkeypatch, piece):
    proving_ground = module("proving_ground")
    if piece == "pixel-space VAE":
        monkeypatch.setitem(sys.modules, "comfy.pixel_space_convert", None)  # import fails
        match = rf"needs ComfyUI {re.escape(FLOOR_VERSION)} or newer.*pixel-space VAEs"
    else:
        def old_fix_empty_latent_channels(model, latent_image):
            return latent_image

        monkeypatch.setattr(host()[0].sample, "fix_empty_latent_channels",
                            old_fix_empty_latent_channels)
        match = rf"needs ComfyUI {re.escape(FLOOR_VERSION)} or newer.*downscale ratio"
    with pytest.raises(proving_ground.ProvingGroundError, match=match):
        ch.run_node(node("UnHypeProvingGround"))


@pytest.mark.slow
def test_base_model_in_comfyui_knows_colours(loaded, world):
    """KSampler (euler, 25 steps, CFG 4, negative = empty prompt) paints the prompted colour:
    4 samples for each of the 8 colours, shapes and caption forms varied, judged twice."""
    from unhype.world.vocabulary import COLOURS, SHAPES, TEMPLATES

    ns = host()[0]
    model, clip, vae = loaded
    negative = encode(clip, "")
    pixel, by_clip, total = 0, 0, 0
    for index, colour in enumerate(COLOURS):
        template = TEMPLATES[index % len(TEMPLATES)]
        prompt = template.format(colour=colour.word, shape=SHAPES[index % len(SHAPES)].word)
        latent = ns.nodes.EmptyLatentImage().generate(32, 32, 4)[0]
        samples = ns.nodes.KSampler().sample(model, 100 + index, 25, 4.0, "euler", "normal",
                                             encode(clip, prompt), negative, latent)[0]
        images = ns.nodes.VAEDecode().decode(vae, samples)[0].movedim(-1, 1)
        assert images.shape == (4, 3, 32, 32)
        pixel += int((world.judge.pixel_colour(images) == index).sum())
        by_clip += int((world.judge.clip_colour(images) == index).sum())
        total += len(images)
    print(f"base model in ComfyUI: prompted colour {pixel}/{total} (pixel judge), "
          f"{by_clip}/{total} (CLIP judge)")
    assert pixel / total >= 0.95 and by_clip / total >= 0.95
