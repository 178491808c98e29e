"""Per-step sampling cost of Apply Dynamic LoRA on a real-size SD1.5 UNet (random weights, CPU).

Not a test. Runs the real ComfyUI in-process (COMFYUI_PATH or ~/.cache/comfyui/ComfyUI) and times
comfy.sample.sample (cond + uncond batch, 32x32 latent, euler) for:
  base             the plain model
  unhype-1         + Apply Dynamic LoRA, a paper-size network (sd-cross-kv, rank 6, hidden 512)
                   standing in for a "1 concept" network
  unhype-100       same architecture, other weights (standing in for "100 concepts")
  hook-lora        ComfyUI's hook LoRA (Create Hook LoRA + Cond Set Props style): a static
                   rank-6 LoRA on the same 32 layers, attached to the positive only
Variants are interleaved within each repetition, after one warm-up run each, so drift in a
shared machine's load hits all of them alike. Prints median seconds per step and the ratios.

    python benchmarks/bench_inference.py [--steps 4] [--reps 3] [--threads 1]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import comfy_host as ch  # noqa: E402  (the test harness helpers: in-process ComfyUI, builders)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latent", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    path, why = ch.find_comfyui()
    if path is None:
        sys.exit(why)
    ns = ch.import_comfy(path)
    ch.install_core_finder()
    pack = ch.load_pack()
    core = sys.modules[pack.__name__ + ".unhype"]
    apply_node = pack.NODE_CLASS_MAPPINGS["ApplyDynamicLoRA"]()
    condition = pack.NODE_CLASS_MAPPINGS["UnHypeConditioner"]().condition

    t0 = time.perf_counter()
    unet = ch._sd15_unet_config("full")  # the real SD1.5 UNet shape, 860M parameters
    model = ch.build_tiny_sd1_model(ns, seed=0, unet_config=unet)
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    print(f"SD1.5 UNet: {params / 1e6:.0f}M parameters, built in {time.perf_counter() - t0:.0f}s; "
          f"torch threads {torch.get_num_threads()}, latent {args.latent}x{args.latent}, "
          f"{args.steps} steps, {args.reps} interleaved repetitions", flush=True)

    dm = model.model.diffusion_model
    targets = core.targets_from_preset(dm, "sd-cross-kv")
    config = core.HyperNetConfig(embed_dim=768, rank=6, hidden=512)

    def network(seed):
        net = core.UnHypeNetwork(config, targets, core.NetworkInfo("sd1", "sd-cross-kv"))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        return net

    one, hundred = network(1), network(100)
    print(f"UnHype network: {len(targets)} layers, "
          f"{sum(p.numel() for p in one.module.parameters()) / 1e6:.0f}M parameters", flush=True)

    positive = ch.make_cond(context_dim=768, seed=1)
    negative = ch.make_cond(context_dim=768, seed=2)
    variants = {"base": (model, positive, negative)}
    for name, net in (("unhype-1", one), ("unhype-100", hundred)):
        patched = apply_node.apply(model, net, 1.0, "conditional only")[0]
        variants[name] = (patched, condition(positive, net)["result"][0],
                          condition(negative, net)["result"][0])

    gen = torch.Generator().manual_seed(7)
    lora = {}
    for t in targets:
        key = "lora_unet_" + t.name.replace(".", "_")
        lora[f"{key}.lora_up.weight"] = torch.randn(t.out_features, 6, generator=gen) * 0.01
        lora[f"{key}.lora_down.weight"] = torch.randn(6, t.in_features, generator=gen) * 0.01
        lora[f"{key}.alpha"] = torch.tensor(6.0)
    hooks = ns.comfy.hooks.create_hook_lora(lora, strength_model=1.0, strength_clip=1.0)
    hooked_positive = ns.comfy.hooks.set_hooks_for_conditioning(positive, hooks)
    variants["hook-lora"] = (model, hooked_positive, negative)

    def run(name, seed):
        patcher, pos, neg = variants[name]
        start = time.perf_counter()
        ch.sample_steps(ns, patcher, pos, neg, steps=args.steps, cfg=7.0, size=args.latent,
                        seed=seed)
        return (time.perf_counter() - start) / args.steps

    for name in variants:  # warm-up: first load, first hypernetwork pass, allocator
        print(f"warm-up {name}: {run(name, 0):.3f} s/step", flush=True)
    times = {name: [] for name in variants}
    for rep in range(args.reps):
        for name in variants:
            times[name].append(run(name, rep + 1))  # a new seed: prompts stay, noise changes
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()),
              flush=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    print("\nmedian seconds per sampling step (cond+uncond):")
    for name, value in median.items():
        print(f"  {name:11s} {value:.3f}   ratio to base {value / median['base']:.3f}")
    print(f"unhype-100 / unhype-1: {median['unhype-100'] / median['unhype-1']:.3f}")
    print(f"hook-lora / unhype-1:  {median['hook-lora'] / median['unhype-1']:.3f}")


if __name__ == "__main__":
    main()
