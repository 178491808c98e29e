"""The per-row path on other model families (tiny SDXL and Flux built with ComfyUI's classes) and
in lowvram mode: outputs of a real sampling call's batch equal the per-row merged reference."""

import sys
from types import SimpleNamespace

import pytest
import torch

import comfy_host as ch
from _nodes_helpers import (
    hooks_left,
    host,
    make_network,
    merged_reference,
    node,
)

pytestmark = [pytest.mark.host, pytest.mark.usefixtures("unhype_host")]

TINY_SDXL = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
    "context_dim": 64, "num_head_channels": 16, "use_linear_in_transformer": True,
    "num_classes": "sequential",
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": 2816,
    "use_temporal_attention": False, "use_temporal_resblock": False, "use_checkpoint": False,
}
TINY_FLUX = {
    "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
    "vec_in_dim": 768, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 2.0,
    "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12],
    "theta": 10000, "patch_size": 2, "qkv_bias": True, "txt_ids_dims": [],
}


#: ComfyUI's model configs UnHype knows, and their families (the others are refused)
KNOWN = {"SD15": "sd1", "SD15_instructpix2pix": "sd1", "SD20": "sd2", "SD21UnclipL": "sd2",
         "SD21UnclipH": "sd2", "SD_X4Upscaler": "sd2", "LotusD": "sd2", "SDXL": "sdxl",
         "SDXL_instructpix2pix": "sdxl", "SSD1B": "sdxl", "Segmind_Vega": "sdxl",
         "KOALA_700M": "sdxl", "KOALA_1B": "sdxl", "Flux": "flux", "FluxSchnell": "flux",
         "FluxInpaint": "flux", "Flux2": "flux2", "WAN21_T2V": "wan", "WAN22_T2V": "wan",
         "QwenImage": "qwenimage", "ZImage": "zimage"}


def test_model_family_of_every_comfyui_model_config():
    """The most derived ComfyUI class decides: Flux2, a subclass of Flux, is its own family;
    every model outside the table is refused with a message naming it."""
    ns = host()[0]
    models = sys.modules[f"{host()[1].__name__}.nodes.models"]
    seen = set()
    for cls in ns.supported_models.models:
        config = cls({**cls.unet_config, "hidden_size": 64})  # Flux2 reads its width
        model = SimpleNamespace(model=SimpleNamespace(model_config=config))  # a MODEL's chain
        if cls.__name__ in KNOWN:
            assert models.model_family(model) == KNOWN[cls.__name__], cls.__name__
            seen.add(cls.__name__)
            continue
        with pytest.raises(models.UnsupportedModelError) as refused:
            models.model_family(model)
        assert str(refused.value).startswith(
            "UnHype works on SD1.x, SD2.x, SDXL, Flux.1, Flux.2 Klein, Wan 2.1/2.2 T2V, "
            "Qwen-Image and Z-Image models (and trains on all of them); this "
            f"MODEL is {cls.__name__}")
        assert str(refused.value).endswith(
            ". Load an SD1.x / SD2.x / SDXL / Flux.1 / Flux.2 Klein / Wan 2.1/2.2 T2V / "
            "Qwen-Image / Z-Image checkpoint.")
    assert {"SD15", "SD20", "SDXL", "Flux", "WAN21_T2V", "WAN22_T2V", "QwenImage",
            "ZImage"} <= seen
    if hasattr(ns.supported_models, "Flux2"):
        assert issubclass(ns.supported_models.Flux2, ns.supported_models.Flux)


def build(config_class, unet_config, seed=0):
    ns = host()[0]
    model_config = config_class(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device=torch.device("cpu"))
    ch.fill_random_(model.diffusion_model, seed=seed, std=0.05)
    model.eval()
    return ns.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                         offload_device=torch.device("cpu"))


class Capture:
    """APPLY_MODEL wrapper that keeps the arguments of the first model call."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, t, c_concat, c_crossattn, control, transformer_options,
                 **kwargs):
        self.calls.append(dict(x=x, t=t, c_concat=c_concat, c_crossattn=c_crossattn,
                               cond_or_uncond=list(transformer_options["cond_or_uncond"]),
                               kwargs=dict(kwargs)))
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def first_call(patcher, positive, negative, channels, cfg):
    """Sample one step on `patcher` (no UnHype wrapper) and return the model call's inputs."""
    ns = host()[0]
    capture = Capture()
    spy = patcher.clone()
    spy.add_wrapper_with_key(ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "capture", capture)
    latent = torch.zeros(1, channels, 8, 8)
    ns.sample.sample(spy, ns.sample.prepare_noise(latent, 0), 1, cfg, "euler", "normal",
                     positive, negative, latent, disable_pbar=True, seed=0)
    return capture.calls[0]


def run_rows(base_model, call, rows, wrappers=None):
    ns = host()[0]
    sliced = lambda v: v[rows] if torch.is_tensor(v) and v.shape[:1] == call["x"].shape[:1] else v  # noqa: E731
    options = {"cond_or_uncond": call["cond_or_uncond"]}
    if wrappers is not None:
        options["wrappers"] = ns.comfy.patcher_extension.copy_nested_dicts(wrappers)
    else:
        options["cond_or_uncond"] = [0]
    kwargs = {k: sliced(v) for k, v in call["kwargs"].items()}
    with torch.no_grad():
        return base_model.apply_model(sliced(call["x"]), sliced(call["t"]),
                                      c_concat=call["c_concat"],
                                      c_crossattn=sliced(call["c_crossattn"]),
                                      transformer_options=options, **kwargs)


def check_family(model, network, positive, negative, channels, mode, cfg, strength=0.8):
    run = node("UnHypeConditioner").execute
    pos, neg = run(positive, network)[0], run(negative, network)[0]
    call = first_call(model, pos, neg, channels, cfg)  # the base model receives the extra kwarg
    assert "unhype_embedding" in call["kwargs"] and call["x"].shape[0] == 2  # cond+uncond batched
    patched = node("UnHypeApplyDynamicLoRA").execute(model, network, strength, mode)[0]
    out = run_rows(model.model, call, slice(None), wrappers=patched.wrappers)
    base = run_rows(model.model, call, slice(None), wrappers={})
    for row, chunk in enumerate(call["cond_or_uncond"]):
        if mode == "conditional only" and chunk == 1:
            assert torch.equal(out[row], base[row])
            continue
        pooled = call["kwargs"]["unhype_embedding"][row:row + 1, 1:]
        ref = merged_reference(model.model, network, pooled, strength)
        expected = run_rows(ref, call, slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5)
        assert (out[row] - base[row]).abs().max() > 1e-4
    assert hooks_left(model.model) == []


def test_sdxl_cross_kv_per_row():
    ns = host()[0]
    model = build(ns.supported_models.SDXL, TINY_SDXL)
    network = make_network(model.model.diffusion_model, "sdxl-cross-kv", embed_dim=1280,
                           base_arch="sdxl", seed=3)
    expected = [n for n, _ in model.model.diffusion_model.named_modules()
                if n.endswith(("attn2.to_k", "attn2.to_v"))]
    assert [t.name for t in network.targets] == expected and len(expected) == 8
    check_family(model, network, ch.make_cond(64, seed=1, pooled_dim=1280),
                 ch.make_cond(64, seed=2, pooled_dim=1280), channels=4,
                 mode="conditional only", cfg=5.0)


def test_flux_value_out_all_rows():
    ns = host()[0]
    model = build(ns.supported_models.Flux, TINY_FLUX)
    network = make_network(model.model.diffusion_model, "flux-value-out", embed_dim=768,
                           base_arch="flux", seed=4)
    sliced = [t for t in network.targets if t.out_slice is not None]
    assert {t.name.split(".")[-1] for t in network.targets} == {"qkv", "proj", "linear1"}
    assert sliced and all(t.out_slice[1] - t.out_slice[0] == 64 for t in sliced)
    # cfg 2 so ComfyUI runs an unconditional pass too; "all rows" gives both their own LoRA
    check_family(model, network, ch.make_cond(64, seed=1, pooled_dim=768),
                 ch.make_cond(64, seed=2, pooled_dim=768), channels=16, mode="all rows", cfg=2.0)


def test_sdxl_network_on_sd1_model_is_refused():
    ns = host()[0]
    sdxl = build(ns.supported_models.SDXL, TINY_SDXL)
    network = make_network(sdxl.model.diffusion_model, "sdxl-cross-kv", embed_dim=1280,
                           base_arch="sdxl")
    sd1 = ch.build_tiny_sd1_model(ns)
    with pytest.raises(ValueError, match=r"made for SDXL \(sdxl;.*this model is SD1.x \(sd1;"):
        node("UnHypeApplyDynamicLoRA").execute(sd1, network, 1.0, "conditional only")


def test_lowvram_with_ordinary_lora():
    """Partially loaded model (lowvram: weights cast per call, LoRA applied by weight_function)."""
    ns = host()[0]
    model = ch.build_tiny_sd1_model(ns, seed=2)
    network = make_network(model.model.diffusion_model, embed_dim=64, seed=5)
    name = "output_blocks.3.1.transformer_blocks.0.attn2.to_v"
    module = model.model.diffusion_model.get_submodule(name)
    gen = torch.Generator().manual_seed(9)
    up = torch.randn(module.out_features, 2, generator=gen) * 0.3
    down = torch.randn(2, module.in_features, generator=gen) * 0.3
    key = "lora_unet_" + name.replace(".", "_")
    lora = {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
            f"{key}.alpha": torch.tensor(2.0)}
    with_lora = ns.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0]
    patched = node("UnHypeApplyDynamicLoRA").execute(with_lora, network, 1.0, "all rows")[0]
    run = node("UnHypeConditioner").execute
    pos = run(ch.make_cond(64, seed=11), network)[0]
    neg = run(ch.make_cond(64, seed=12), network)[0]
    call = first_call(model, pos, neg, channels=4, cfg=5.0)
    patched.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1)
    try:
        assert getattr(module, "comfy_cast_weights", False) and module.weight_function
        out = run_rows(model.model, call, slice(None), wrappers=patched.wrappers)
    finally:
        patched.unpatch_model()
    assert not getattr(module, "weight_function", None)
    for row in range(2):
        pooled = call["kwargs"]["unhype_embedding"][row:row + 1, 1:]
        ref = merged_reference(model.model, network, pooled, 1.0, {name: up @ down})
        expected = run_rows(ref, call, slice(row, row + 1))
        torch.testing.assert_close(out[row:row + 1], expected, rtol=1e-4, atol=1e-5)
    assert hooks_left(model.model) == []


def test_with_controlnet():
    """A tiny ControlNet (ComfyUI's cldm class) applied with ControlNetApplyAdvanced on the
    conditioned positive and negative: cond+uncond stay one call, both ControlNet and UnHype act."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.ops

    ns = host()[0]
    model = ch.build_tiny_sd1_model(ns, seed=4)
    network = make_network(model.model.diffusion_model, embed_dim=64, seed=12)
    config = {k: v for k, v in ch.TINY_SD1_UNET_CONFIG.items()
              if k not in ("out_channels", "transformer_depth_output", "use_temporal_attention",
                           "use_temporal_resblock")}
    config.update(num_heads=8, num_head_channels=-1)  # what SD15.unet_extra_config adds
    control_model = comfy.cldm.cldm.ControlNet(hint_channels=3, **config,
                                               operations=comfy.ops.disable_weight_init)
    ch.fill_random_(control_model, seed=13, std=0.05)
    control = comfy.controlnet.ControlNet(control_model, load_device=torch.device("cpu"))
    run = node("UnHypeConditioner").execute
    pos = run(ch.make_cond(64, seed=21), network)[0]
    neg = run(ch.make_cond(64, seed=22), network)[0]
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    cpos, cneg = ch.run_node(ns.nodes.ControlNetApplyAdvanced, positive=pos, negative=neg,
                             control_net=control, image=hint, strength=1.0, start_percent=0.0,
                             end_percent=1.0)
    patched = node("UnHypeApplyDynamicLoRA").execute(model, network, 1.0, "all rows")[0]
    calls = []
    patched.add_wrapper_with_key(
        ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "log",
        lambda executor, x, *args, **kwargs: calls.append(
            (x.shape[0], args[2] is not None)) or executor(x, *args, **kwargs))
    with_both = ch.sample_steps(ns, patched, cpos, cneg, steps=2)
    assert calls and all(rows == 2 and has_control for rows, has_control in calls)
    without_unhype = ch.sample_steps(ns, model, cpos, cneg, steps=2)
    without_control = ch.sample_steps(ns, patched, pos, neg, steps=2)
    assert torch.isfinite(with_both).all()
    assert not torch.equal(with_both, without_unhype) and not torch.equal(with_both,
                                                                          without_control)
    assert hooks_left(model.model) == [] and hooks_left(control_model) == []
