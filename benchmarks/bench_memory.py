"""Peak CPU memory of one UnHype training step per family, with and without gradient checkpointing.

Not a test. Each configuration runs in a process of its own: it builds a real-size diffusion
model with random weights (ComfyUI's classes, benchmarks/gpu_check.py's builders), the
ComfyDenoiser and the Trainer with the node's defaults (trajectory objective, paper variant),
returns freed heap to the system, resets the kernel's peak-RSS mark (/proc/self/clear_refs) and
runs ONE training step: ESD x_t sampling (a 2-step schedule, so 1 sampler step), the ESD
targets, the LoRA'd forward and backward, the trajectory and retention updates, the first Adam
steps (their state is allocated here). It prints the process's resident memory before the step,
its peak during the step, the gradients and Adam state the step leaves (part of that peak, the
same with or without checkpointing) and the step's wall time, as a table.

    python benchmarks/bench_memory.py               # SD1.5 at 512 px (64x64 latents), fp32
    python benchmarks/bench_memory.py --families sd15,sdxl --dtype bf16 --variant compact

fp32 is what ComfyUI runs a UNet in on a CPU. A family whose weights and hypernetwork training
state alone exceed the memory available is skipped with the estimate (SDXL's paper-variant
hypernetwork is 1.6 B parameters: 35 GiB with its gradients and two Adams; Flux's UNet is 12 B).
Linux only (/proc).
"""

import argparse
import ctypes
import dataclasses
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu_check  # noqa: E402  (builders; also puts the repo root on sys.path)

from unhype.headless import find_comfyui, import_pack  # noqa: E402

GIB = 2**30
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
#: diffusion model parameters of each family (printed by the child; used for the estimate)
PARAMS = {"sd15": 0.86e9, "sdxl": 2.57e9, "flux": 11.9e9}
#: hypernetwork parameters of the node's defaults (paper variant; compact is ~5 M)
HYPER = {"sd15": {"paper": 0.179e9, "compact": 4e6},
         "sdxl": {"paper": 1.58e9, "compact": 5e6},
         "flux": {"paper": 0.03e9, "compact": 3e6}}


def kib(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in {path}")


def child(args) -> dict:
    """One configuration, in this process: returns the figures as a dict."""
    import_pack(find_comfyui(), "cpu")
    import torch

    torch.set_num_threads(args.threads)
    pack = sys.modules["comfyui_unhype"]
    denoiser_mod = sys.modules[pack.__name__ + ".nodes.training.denoiser"]
    core = sys.modules[pack.__name__ + ".unhype"]
    settings_mod = importlib.import_module(pack.__name__ + ".unhype.settings")
    trigger_mod = importlib.import_module(pack.__name__ + ".unhype.trigger")
    training = importlib.import_module(pack.__name__ + ".unhype.training")
    prompts = importlib.import_module(pack.__name__ + ".unhype.prompts")
    family = gpu_check.FAMILIES[args.family]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = gpu_check.build_model(args.family, False, dtype, torch.device("cpu"))
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = denoiser_mod.ComfyDenoiser(
            model, gpu_check.RandomClip(family.unet, family.tokens), family=family.key,
            resolution=args.resolution, sampling_steps=2,
            gradient_checkpointing=args.checkpointing == "on")
        settings = settings_mod.TrainingSettings(concepts="a zebra",
                                                 variant=args.variant).validate()
        kind = settings_mod.trigger_kind(settings, family.key)
        trigger = trigger_mod.measure_trigger(denoiser, kind)
        net_config, config = settings_mod.build_configs(
            settings, family.key, prompts.builtin_retain_prompts(), trigger)
        config = dataclasses.replace(config, xt_cache_size=1)
        targets = core.targets_from_preset(denoiser.lora_root, family.preset)
        trainer = training.Trainer(denoiser, net_config, targets,
                                   core.NetworkInfo(family.key, family.preset), config)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = kib("/proc/self/status", "VmRSS")
        start = time.perf_counter()
        trainer.train_step()
        seconds = time.perf_counter() - start
        peak = kib("/proc/self/status", "VmHWM")
    state = sum(t.numel() * t.element_size() for opt in trainer.optimizers.values()
                for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainer.module.parameters()
                if p.grad is not None)
    unet = model.model.diffusion_model
    return {
        "family": args.family, "px": denoiser.latent_shape[-1] * 8, "dtype": args.dtype,
        "checkpointing": args.checkpointing, "variant": args.variant,
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "unet_dtype": str(next(unet.parameters()).dtype).replace("torch.", ""),
        "hyper_params": sum(p.numel() for p in trainer.module.parameters()),
        "hyper_dtype": str(next(trainer.module.parameters()).dtype).replace("torch.", ""),
        "adam_dtypes": sorted({str(t.dtype).replace("torch.", "")
                               for opt in trainer.optimizers.values()
                               for s in opt.state.values() for t in s.values()
                               if torch.is_tensor(t) and t.ndim}),
        "before": before * 1024, "peak": peak * 1024, "state": state + grads,
        "seconds": seconds, "threads": torch.get_num_threads(),
    }


def estimate(family: str, dtype: str, variant: str) -> float:
    """Bytes of the weights and the hypernetwork's training state, before any activation."""
    return PARAMS[family] * BYTES[dtype] + HYPER[family][variant] * 4 * 6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd15")
    parser.add_argument("--resolution", type=int, default=0,
                        help="pixels; 0: the family's training default (SD1.5 512)")
    parser.add_argument("--dtype", choices=sorted(BYTES), default="fp32")
    parser.add_argument("--variant", choices=("paper", "compact"), default="paper")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.family = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    rows = []
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        if family not in gpu_check.FAMILIES:
            sys.exit(f"bench_memory: unknown family {family!r}; choose from "
                     f"{sorted(gpu_check.FAMILIES)}")
        available = kib("/proc/meminfo", "MemAvailable") * 1024
        need = estimate(family, args.dtype, args.variant)
        if need > 0.8 * available:
            print(f"{family}: skipped: weights and hypernetwork training state alone need "
                  f"~{need / GIB:.1f} GiB, {available / GIB:.1f} GiB available", flush=True)
            continue
        for checkpointing in ("on", "off"):
            command = [sys.executable, __file__, "--child", family, "--checkpointing",
                       checkpointing, "--dtype", args.dtype, "--variant", args.variant,
                       "--resolution", str(args.resolution), "--threads", str(args.threads)]
            print(f"{family}, checkpointing {checkpointing} ...", flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not results:
                print(f"  failed (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
                continue
            rows.append(json.loads(results[-1][len("RESULT "):]))

    print("\nOne UnHype training step (first step: x_t, targets, forward+backward, trajectory "
          "and retention updates, Adam state allocated), CPU, peak resident memory:")
    print(f"{'family':7s} {'px':>5s} {'dtype':5s} {'ckpt':4s} {'UNet':>6s} {'hyper':>6s} "
          f"{'before':>7s} {'peak':>7s} {'step adds':>9s} {'of which grads+Adam':>19s} "
          f"{'step s':>7s}")
    for r in rows:
        print(f"{r['family']:7s} {r['px']:5d} {r['dtype']:5s} {r['checkpointing']:4s} "
              f"{r['unet_params'] / 1e6:5.0f}M {r['hyper_params'] / 1e6:5.0f}M "
              f"{r['before'] / GIB:7.2f} {r['peak'] / GIB:7.2f} "
              f"{(r['peak'] - r['before']) / GIB:9.2f} {r['state'] / GIB:19.2f} "
              f"{r['seconds']:7.1f}")
    for family in dict.fromkeys(r["family"] for r in rows):
        pair = {r["checkpointing"]: r for r in rows if r["family"] == family}
        if len(pair) == 2:
            def rest(r):  # what the step adds beyond the state it leaves: activations, temps
                return r["peak"] - r["before"] - r["state"]
            print(f"{family}: with checkpointing the step adds {rest(pair['on']) / GIB:.2f} GiB "
                  f"besides grads+Adam, without {rest(pair['off']) / GIB:.2f} GiB "
                  f"({rest(pair['on']) / rest(pair['off']):.2f}x); peak "
                  f"{pair['on']['peak'] / pair['off']['peak']:.2f}x; step time "
                  f"{pair['on']['seconds'] / pair['off']['seconds']:.2f}x")
    for r in rows[:1]:
        print(f"dtypes: UNet {r['unet_dtype']}, hypernetwork {r['hyper_dtype']}, Adam state "
              f"{'/'.join(r['adam_dtypes'])}; {r['threads']} torch thread(s)")


if __name__ == "__main__":
    main()
