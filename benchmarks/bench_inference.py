"""Per-step sampling cost of Apply Dynamic LoRA on a real-size SD1.5 UNet (random weights, CPU).

Not a test. Runs the real ComfyUI in-process (COMFYUI_PATH or ~/.cache/comfyui/ComfyUI) and times
comfy.sample.sample (cond + uncond batch, 32x32 latent, euler) for:
  base             the plain model
  unhype-1         + Apply Dynamic LoRA, a paper-size network (sd-cross-kv, rank 6, hidden 512)
                   standing in for a "1 concept" network
  unhype-100       same architecture, other weights (standing in for "100 concepts")
  hook-lora        ComfyUI's hook LoRA (Create Hook LoRA + Cond Set Props style): a static
                   rank-6 LoRA on the same 32 layers, attached to the positive only
Variants are interleaved (order rotated every repetition) after one warm-up run each, so drift
in a shared machine's load hits all of them alike. A step's time comes from the sampler's
per-step callback, so model loading/patching and the first step are not counted (the whole
call's time is printed for the warm-up). Prints median and best seconds per step and ratios.

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
    apply_node = sys.modules[pack.__name__ + ".nodes"].UnHypeApplyDynamicLoRA
    condition = sys.modules[pack.__name__ + ".nodes"].UnHypeConditioner.execute

    t0 = time.perf_counter()
    unet = ch.sd15_unet_config("full")  # the real SD1.5 UNet shape, 860M parameters
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
        patched = apply_node.execute(model, net, 1.0, "conditional only")[0]
        variants[name] = (patched, condition(positive, net)[0],
                          condition(negative, net)[0])

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
        """Seconds per step from the sampler's per-step callbacks: model loading, patching and
        the first step (where a new prompt's factors are generated) are left out."""
        patcher, pos, neg = variants[name]
        stamps = []
        latent = torch.zeros(1, 4, args.latent, args.latent)
        noise = ns.sample.prepare_noise(latent, seed)
        start = time.perf_counter()
        ns.sample.sample(patcher, noise, args.steps + 1, 7.0, "euler", "normal", pos, neg, latent,
                         disable_pbar=True, seed=seed,
                         callback=lambda *a: stamps.append(time.perf_counter()))
        total = time.perf_counter() - start
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1), total

    for name in variants:  # warm-up: first load, first hypernetwork pass, allocator
        step, total = run(name, 0)
        print(f"warm-up {name}: {step:.3f} s/step ({total:.1f} s for the whole call)", flush=True)
    times = {name: [] for name in variants}
    names = list(variants)
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate the order
        for name in order:
            times[name].append(run(name, rep + 1)[0])  # new noise, same prompts
        print(f"rep {rep + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}" for n in names),
              flush=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    print("\nseconds per sampling step (cond+uncond), median and best of the repetitions:")
    for name in names:
        print(f"  {name:11s} median {median[name]:.3f} (x{median[name] / median['base']:.3f})"
              f"   best {best[name]:.3f} (x{best[name] / best['base']:.3f})")
    print(f"unhype-100 / unhype-1: {median['unhype-100'] / median['unhype-1']:.3f}")
    # The added work in isolation (robust to a busy machine): the 32 target Linears on a
    # cond+uncond context, with and without the per-row LoRA hooks, best of 30.
    state = variants["unhype-1"][0].get_wrappers(
        ns.comfy.patcher_extension.WrappersMP.APPLY_MODEL, "unhype")[0]
    emb = variants["unhype-1"][1][0][1]["model_conds"]["unhype_embedding"].cond
    _, factors = state.cache.select(emb[:, 1:], torch.device("cpu"), torch.float32)
    context = torch.randn(2, 77, 768)
    modules = [dm.get_submodule(t.name) for t in targets]

    def layers(hooked):
        best_time = float("inf")
        for _ in range(30):
            start = time.perf_counter()
            with torch.no_grad():
                if hooked:
                    with core.row_lora(dm, targets, factors, rows=torch.tensor([0]),
                                       scale=1.0, norm_cap=config.norm_cap):
                        for m in modules:
                            m(context)
                else:
                    for m in modules:
                        m(context)
            best_time = min(best_time, time.perf_counter() - start)
        return best_time

    plain, hooked = layers(False), layers(True)
    print(f"target layers alone: {plain * 1e3:.2f} ms plain, {hooked * 1e3:.2f} ms with the "
          f"per-row LoRA hooks: +{(hooked - plain) * 1e3:.2f} ms per model call = "
          f"{(hooked - plain) / best['base'] * 100:.3f}% of the best base step")
    print(f"hook-lora / unhype-1:  {median['hook-lora'] / median['unhype-1']:.3f}")


if __name__ == "__main__":
    main()
