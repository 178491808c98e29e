"""GPU check for training: UnHype (trajectory objective) vs a plain ESD-x static LoRA step.

Not a test. Builds a real-size SD1.5 UNet (860M parameters, random weights, fp16 or bf16) and a
random full-size CLIP-L with ComfyUI's own classes, wraps them in the pack's `ComfyDenoiser`, and
times on the same model and the same x_t:

  esd-x    one ESD-x step: anchor + concept predictions (no grad), the prediction with a static
           rank-r LoRA on the 32 cross-attention k/v layers (the same forward hooks), MSE, backward,
           Adam. This is what the hypernetwork is compared against.
  unhype   one step of the core Trainer, trajectory objective: the same three predictions and
           backward, plus the hypernetwork at s and s+1, the trajectory loss, and the retention
           update (8 retain prompts), i.e. two Adam steps.

x_t comes from the Trainer's cache (filled during warm-up) and CLIP encodings are cached, so
neither side is charged for ESD partial sampling; one 50-step x_t sampling is timed on its own.
Prints steps/s, peak GPU memory and the ratio (target <= 1.3x). Sized for < 5 minutes on one GPU.

    python benchmarks/gpu_train_check.py                 # GPU, fp16, 20 timed steps each
    python benchmarks/gpu_train_check.py --dtype bf16 --steps 30
    python benchmarks/gpu_train_check.py --tiny          # CPU smoke run: tiny model, 2 steps
"""

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from unhype.headless import find_comfyui, import_pack  # noqa: E402

SD15_UNET = {  # the real SD1.5 UNet
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_linear_in_transformer": False, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False,
}
TINY_UNET = {**SD15_UNET, "model_channels": 32, "channel_mult": [1, 2, 2, 2], "context_dim": 64,
             "num_heads": 2}
TINY_CLIP = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
             "num_hidden_layers": 2}
TEMPLATES = ["a photo of {}", "a painting of {}", "{}", "a close-up photo of {}"]


def fill_random_(module, seed: int, std: float = 0.02) -> None:
    """comfy.ops leaves weights uninitialised: norms 1, biases 0, other weights N(0, std)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if t.ndim == 1 and name.endswith("weight") and "norm" in name.lower() or \
                    name.endswith(("ln_1.weight", "ln_2.weight")):
                t.fill_(1.0)
            elif name.endswith("bias"):
                t.zero_()
            else:
                t.copy_((torch.randn(t.shape, generator=gen) * std).to(t.dtype))


def build(tiny: bool, dtype, device):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import torch

    model_config = comfy.supported_models.SD15(dict(TINY_UNET if tiny else SD15_UNET))
    model_config.set_inference_dtype(dtype, None)
    base = comfy.model_base.BaseModel(model_config, device=device)
    fill_random_(base.diffusion_model, seed=0, std=0.05 if tiny else 0.02)
    base.eval()
    model = comfy.model_patcher.ModelPatcher(base, load_device=device,
                                             offload_device=torch.device("cpu"))
    options = {"clip_l_model_config": TINY_CLIP} if tiny else {}
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer,
                                                    comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target=target, model_options=options)
    fill_random_(clip.cond_stage_model, seed=1, std=0.2 if tiny else 0.02)
    return model, clip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--sampling-steps", type=int, default=50,
                        help="schedule length of the ESD x_t sampling")
    parser.add_argument("--rank", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--variant", choices=("paper", "compact"), default="paper")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke run: tiny UNet and CLIP, fp32, 2 steps, 64 px")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.dtype, args.resolution = 2, 1, "fp32", 64
        args.sampling_steps = min(args.sampling_steps, 8)
        args.hidden = min(args.hidden, 16)

    started = time.perf_counter()
    import_pack(find_comfyui(), "cpu" if args.tiny else "auto")
    import comfy.model_management as mm
    import torch

    denoiser_mod = importlib.import_module("comfyui_unhype.nodes.comfy_denoiser")
    core = importlib.import_module("comfyui_unhype.unhype")
    training = importlib.import_module("comfyui_unhype.unhype.training")
    prompts_mod = importlib.import_module("comfyui_unhype.unhype.prompts")

    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    if not cuda and not args.tiny:
        print("no CUDA device: this check is meant for a GPU (use --tiny for a CPU smoke run)")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model, clip = build(args.tiny, dtype, device)
    unet_params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"device {name}, UNet {unet_params / 1e6:.0f}M parameters ({args.dtype}), "
          f"{args.resolution}px, built in {time.perf_counter() - started:.0f}s", flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def reset_peak():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def peak_gib():
        return torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")

    results = {}
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = denoiser_mod.ComfyDenoiser(model, clip, resolution=args.resolution,
                                              sampling_steps=args.sampling_steps)
        concept = prompts_mod.Concept("a zebra", "")
        retain = prompts_mod.builtin_retain_prompts()[:64]
        config = training.TrainConfig(
            [concept], retain, TEMPLATES, objective="trajectory", steps=10**6,
            learning_rate=1e-4, eta=1.0, xt_cache_size=1, retain_batch=8, seed=0)
        targets = core.targets_from_preset(denoiser.lora_root, "sd-cross-kv")
        embed_dim = int(denoiser.embed([""]).shape[1])
        net_config = core.HyperNetConfig(embed_dim=embed_dim, rank=args.rank, hidden=args.hidden,
                                         variant=args.variant)
        trainer = training.Trainer(denoiser, net_config, targets,
                                   core.NetworkInfo("sd1", "sd-cross-kv"), config)
        hyper_params = sum(p.numel() for p in trainer.module.parameters())
        print(f"{len(targets)} target layers, hypernetwork {hyper_params / 1e6:.1f}M parameters "
              f"({args.variant}, rank {args.rank}, hidden {args.hidden})", flush=True)
        # encodings cached up front: neither variant is charged for CLIP
        for template in TEMPLATES:
            denoiser.conditioning(prompts_mod.fill(template, concept.name))
        trainer._embed([prompts_mod.fill(t, concept.name) for t in TEMPLATES] + retain)
        denoiser.conditioning("")

        # one x_t: ESD partial sampling, 50-step schedule, stops at a random step
        sync()
        t0 = time.perf_counter()
        x_t, sigma, prompt = trainer._sample_xt(concept)  # fills the cache (size 1)
        sync()
        xt_seconds = time.perf_counter() - t0
        print(f"x_t sampling (random stop in {args.sampling_steps} steps, CFG "
              f"{denoiser.guidance}): "
              f"{xt_seconds:.2f}s", flush=True)

        # -- plain ESD-x: a static LoRA on the same layers, same hooks, same x_t --
        gen = torch.Generator().manual_seed(0)
        static = {t.name: core.RowFactors(
            (torch.rand(1, args.rank, t.in_features, generator=gen) / args.rank**0.5)
            .to(device).requires_grad_(True),
            torch.zeros(1, t.delta_features, args.rank, device=device).requires_grad_(True))
            for t in targets}
        params = [x for f in static.values() for x in (f.down, f.up)]
        optimizer = torch.optim.Adam(params, lr=1e-4)

        def esd_step():
            with torch.no_grad():
                anchored = denoiser.predict(x_t, sigma, [""])
                target = anchored - 1.0 * (denoiser.predict(x_t, sigma, [prompt]) - anchored)
            with core.row_lora(denoiser.lora_root, targets, static):
                predicted = denoiser.predict(x_t, sigma, [prompt])
            loss = torch.nn.functional.mse_loss(predicted.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        variants = {"esd-x": esd_step, "unhype": trainer.train_step}
        for step in variants.values():
            for _ in range(args.warmup):
                step()
        times = {label: [] for label in variants}
        peaks, last = {}, {}
        before = {n: p.detach().clone() for n, p in trainer.module.named_parameters()}
        for label, step in variants.items():
            reset_peak()
            for _ in range(args.steps):
                sync()
                t0 = time.perf_counter()
                last[label] = step()
                sync()
                times[label].append(time.perf_counter() - t0)
            peaks[label] = peak_gib()
        moved = sum(float((p.detach() - before[n]).abs().sum())
                    for n, p in trainer.module.named_parameters())
        print(f"last losses: esd-x {last['esd-x']:.4g}; unhype {last['unhype']}; hypernetwork "
              f"update over the timed steps (sum |delta|) {moved:.3g}"
              + ("  <- NO UPDATE: gradients underflow?" if moved == 0 else ""), flush=True)
        for label in variants:
            median = statistics.median(times[label])
            results[label] = median
            print(f"{label:7s} {1 / median:7.2f} steps/s (median {median * 1000:.1f} ms, best "
                  f"{min(times[label]) * 1000:.1f} ms, {args.steps} steps), peak memory "
                  f"{peaks[label]:.2f} GiB", flush=True)
    ratio = results["unhype"] / results["esd-x"]
    verdict = "OK" if ratio <= 1.3 else "ABOVE TARGET"
    print(f"ratio unhype / esd-x = {ratio:.2f}x per step (target <= 1.3x: {verdict}); "
          f"x_t sampling {xt_seconds:.2f}s once per cached sample; total "
          f"{time.perf_counter() - started:.0f}s on {name}")


if __name__ == "__main__":
    main()
