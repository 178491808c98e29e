"""GPU check: what Apply Dynamic LoRA and the UnHype Trainer cost on one GPU, in one run.

Not a test. Real-size models with random weights, built with ComfyUI's own classes; every ratio
below is measured in the same run, variants interleaved where they are timed against each other.

  sampling  seconds per step of comfy.sample.sample (euler) on SD1.5 (512 px, fp16; CFG 7,
            cond+uncond batch), SDXL (1024 px, bf16; the same) and Z-Image (1024 px, bf16, 6B;
            no pooled vector, so a cond-pooled network; Turbo's CFG 1, all rows) for: base
            model / Apply Dynamic LoRA with a paper-size network "for 1 concept" / the same
            architecture with other weights
            ("for 100 concepts": a network's size does not depend on its concept count) /
            ComfyUI's hook LoRA (a static rank-6 LoRA on the same layers, positive only). Also
            peak VRAM, and the memory ComfyUI counts as loaded for the run: the UNet, plus the
            hypernetwork when Apply Dynamic LoRA hands it to ComfyUI's memory management.
  training  one UnHype Trainer step (the node's defaults: trajectory objective, paper variant;
            x_t cached) against one static ESD-x LoRA step on the same layers, model and x_t,
            with gradient checkpointing (the default) and without: time and peak VRAM. SD1.5
            512 px, SDXL 1024 px, Flux 512 px (bf16, 12B parameters; skipped when it does not
            fit); families the Trainer does not train are skipped, saying so. The first x_t
            sampling (ESD, 50-step schedule, CFG) is timed on its own.
The text encoder is a stand-in returning fixed random conditioning of each family's shapes:
encodings are cached in both sampling and training, so CLIP costs no step time. Sized for
< 8 minutes on one GPU; `--budget` skips what would start after it.

    python benchmarks/gpu_check.py              # on a GPU
    python benchmarks/gpu_check.py --cpu-smoke  # tiny models on the CPU: every code path, fast
"""

import argparse
import dataclasses
import gc
import hashlib
import importlib
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from unhype.families import family  # noqa: E402
from unhype.headless import find_comfyui, import_pack  # noqa: E402

# The released models' shapes, as ComfyUI's model detection reads them from the checkpoints.
SD15_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "use_linear_in_transformer": False, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False,
}
SDXL_UNET = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
    "context_dim": 2048, "num_head_channels": 64, "num_classes": "sequential",
    "adm_in_channels": 2816, "use_linear_in_transformer": True, "use_spatial_transformer": True,
    "legacy": False, "use_temporal_attention": False, "use_temporal_resblock": False,
    "use_checkpoint": False,
}
FLUX_DIT = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "patch_size": 2,
    "vec_in_dim": 768, "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0,
    "num_heads": 24, "depth": 19, "depth_single_blocks": 38, "axes_dim": [16, 56, 56],
    "theta": 10000, "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": [],
}
# Z-Image (Turbo and Base: one shape, 6B) as model_detection reads it from the released checkpoints;
# Qwen3-4B's 2560-wide rows are its caption (tests/test_family_zimage.py checks its preset on it)
ZIMAGE_DIT = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840,
    "cap_feat_dim": 2560, "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30,
    "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
    "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
    "pad_tokens_multiple": 32,
}
# --cpu-smoke: the same classes and module names, tiny
TINY = {
    "sd15": {**SD15_UNET, "model_channels": 32, "channel_mult": [1, 2, 2, 2], "context_dim": 64,
             "num_heads": 2},
    "sdxl": {**SDXL_UNET, "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
             "transformer_depth": [0, 1], "transformer_depth_output": [0, 0, 1, 1],
             "transformer_depth_middle": 1, "context_dim": 64, "num_head_channels": 16},
    "flux": {**FLUX_DIT, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 2.0,
             "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [8, 12, 12]},
    # dim 256: the least Z-Image's 256-d timestep modulation takes; 8 heads of 32 = 8 + 12 + 12
    "zimage": {**ZIMAGE_DIT, "dim": 256, "cap_feat_dim": 32, "n_layers": 1, "n_heads": 8,
               "n_kv_heads": 8, "axes_dims": [8, 12, 12], "axes_lens": [256, 64, 64]},
}


@dataclasses.dataclass(frozen=True)
class Family:
    """A benchmarked model: its real-size config here, its family facts from unhype/families.py."""

    key: str  # a unhype/families.py FAMILIES name
    unet: dict
    dtype: str  # on a GPU
    tokens: int  # context length of one prompt
    sampled: bool  # timed in the sampling check too (at the family's resolution)

    @property
    def entry(self):
        """Its unhype/families.py entry."""
        return family(self.key)

    @property
    def config(self) -> str:
        """The comfy.supported_models class that builds it."""
        return self.entry.comfy_configs[0]

    @property
    def preset(self) -> str:
        return self.entry.target_preset

    @property
    def resolution(self) -> int:
        """Of the training check, and of the sampling check when it is sampled."""
        return self.entry.resolution


FAMILIES = {
    "sd15": Family("sd1", SD15_UNET, "fp16", 77, sampled=True),
    "sdxl": Family("sdxl", SDXL_UNET, "bf16", 77, sampled=True),
    "flux": Family("flux", FLUX_DIT, "bf16", 256, sampled=False),
    # a family with no pooled vector (cond-pooled trigger), distilled Turbo at CFG 1
    "zimage": Family("zimage", ZIMAGE_DIT, "bf16", 64, sampled=True),
}


def widths(unet: dict) -> tuple[int, int | None]:
    """(context width, pooled width) the model's conditioning has; None: no pooled vector."""
    if "cap_feat_dim" in unet:  # Z-Image: the LLM's rows only
        return unet["cap_feat_dim"], None
    if "context_in_dim" in unet:  # Flux: T5 context, CLIP-L pooled vector
        return unet["context_in_dim"], unet["vec_in_dim"]
    pooled = unet["adm_in_channels"] - 6 * 256 if unet.get("adm_in_channels") else 768
    return unet["context_dim"], pooled


def fill_random_(module, seed: int = 0, std: float = 0.02) -> None:
    """comfy.ops leaves weights uninitialised: norm layers get scale 1 and shift 0, other
    biases 0, other weights N(0, std), drawn on the tensor's own device."""
    import torch

    with torch.no_grad():
        for index, m in enumerate(module.modules()):
            norm = "norm" in type(m).__name__.lower()
            own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
            for name, t in own:
                if not t.is_floating_point():
                    continue
                if norm and name in ("weight", "scale"):
                    t.fill_(1.0)
                elif norm or name == "bias":
                    t.zero_()
                else:
                    gen = torch.Generator(device=t.device).manual_seed(seed * 100003 + index)
                    t.copy_(torch.randn(t.shape, generator=gen, device=t.device,
                                        dtype=t.dtype).mul_(std))


def build_model(name: str, tiny: bool, dtype, device, seed: int = 0):
    """A ComfyUI MODEL (ModelPatcher) of the family with random weights, on `device`."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    family = FAMILIES[name]
    config = getattr(comfy.supported_models, family.config)(dict(TINY[name] if tiny
                                                                 else family.unet))
    config.set_inference_dtype(dtype, None)
    base = config.get_model({}, device=device)
    fill_random_(base.diffusion_model, seed=seed, std=0.05 if tiny else 0.02)
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=device,
                                            offload_device=torch.device("cpu"))


class RandomClip:
    """Stand-in text encoder: fixed random CONDITIONING per prompt, of the family's widths."""

    def __init__(self, unet: dict, tokens: int):
        self.tokens, (self.width, self.pooled) = tokens, widths(unet)

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        import torch

        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randn(1, self.tokens, self.width, generator=gen)
        if self.pooled is None:
            return [[rows, {}]]
        return [[rows, {"pooled_output": torch.randn(1, self.pooled, generator=gen)}]]

    def encode(self, text):
        return self.encode_from_tokens_scheduled(self.tokenize(text))


class Clock:
    """Wall time on the device: synchronises CUDA before reading the clock."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        self.device = device

    def now(self) -> float:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def reset_peak(self):
        if self.cuda:
            gc.collect()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if not self.cuda:
            return math.nan
        return self.torch.cuda.max_memory_allocated(self.device) / 2**30


def gib(n: float) -> str:
    return "n/a" if n != n else f"{n:.2f}"


def sampling_check(name, model, pack, args, clock, out):
    """Per-step sampling time and memory of base / Apply Dynamic LoRA / hook LoRA."""
    import comfy.hooks
    import comfy.sample
    import torch

    family = FAMILIES[name]
    core = sys.modules[pack.__name__ + ".unhype"]
    apply_node = sys.modules[pack.__name__ + ".nodes"].UnHypeApplyDynamicLoRA
    condition = sys.modules[pack.__name__ + ".nodes"].UnHypeConditioner.execute
    unet = TINY[name] if args.cpu_smoke else family.unet
    clip = RandomClip(unet, family.tokens)
    targets = core.targets_from_preset(model.model.diffusion_model, family.preset)
    entry = family.entry
    width, pooled = widths(unet)
    # cond-pooled: mean and max of the rows (random conditioning: no rows every prompt shares)
    trigger = {"embed_dim": pooled} if pooled else {"embed_dim": 2 * width,
                                                    "trigger": "cond-pooled"}
    mode = "all rows" if entry.distilled else "conditional only"
    cfg = 1.0 if entry.distilled else 7.0  # distilled: guidance, if any, rides in the cond

    def network(seed):
        """Random weights drawn on the device (1.6 B parameters on SDXL), then put on the CPU,
        where a loaded network starts and ComfyUI's memory management picks it up."""
        config = core.HyperNetConfig(**trigger, rank=6, hidden=args.hidden)
        with torch.device("meta"):
            module = core.HyperNetwork(config, targets)
        module = module.to_empty(device=clock.device)
        with torch.no_grad():
            for index, t in enumerate([*module.parameters(), *module.buffers()]):
                gen = torch.Generator(device=t.device).manual_seed(seed * 100003 + index)
                t.normal_(0.0, 0.02, generator=gen)
        return core.UnHypeNetwork(config, targets, core.NetworkInfo(family.key, family.preset),
                                  module=module.to("cpu").eval())

    positive, negative = clip.encode("a photo of a zebra"), clip.encode("")
    variants = {"base": (model, positive, negative)}
    one, hundred = network(1), network(100)
    for label, net in (("unhype-1", one), ("unhype-100", hundred)):
        patched = apply_node.execute(model, net, 1.0, mode)[0]
        variants[label] = (patched, condition(positive, net)[0],
                           condition(negative, net)[0])
    gen = torch.Generator().manual_seed(7)
    lora = {}
    for t in targets:
        key = "lora_unet_" + t.name.replace(".", "_")
        lora[f"{key}.lora_up.weight"] = torch.randn(t.out_features, 6, generator=gen) * 0.01
        lora[f"{key}.lora_down.weight"] = torch.randn(6, t.in_features, generator=gen) * 0.01
        lora[f"{key}.alpha"] = torch.tensor(6.0)
    hooks = comfy.hooks.create_hook_lora(lora, strength_model=1.0, strength_clip=1.0)
    variants["hook-lora"] = (model, comfy.hooks.set_hooks_for_conditioning(positive, hooks),
                             negative)
    px = 64 if args.cpu_smoke else family.resolution
    latent = torch.zeros(1, model.model.latent_format.latent_channels, px // 8, px // 8)
    counted = {}

    def run(label, seed):
        patcher, pos, neg = variants[label]
        managed = [patcher, *patcher.get_nested_additional_models()]
        stamps = []

        def step(*_):
            stamps.append(clock.now())
            if len(stamps) == 1:
                counted[label] = sum(m.loaded_size() for m in managed) / 2**30

        clock.reset_peak()
        comfy.sample.sample(patcher, comfy.sample.prepare_noise(latent, seed), args.steps + 1,
                            cfg, "euler", "normal", pos, neg, latent, disable_pbar=True,
                            seed=seed, callback=step)
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1), clock.peak_gib()

    names = list(variants)
    for label in names:  # warm-up: loading, the first hypernetwork pass, allocator
        run(label, 0)
    times = {label: [] for label in names}
    peaks = {label: math.nan for label in names}
    for rep in range(args.reps):
        for label in names[rep % len(names):] + names[:rep % len(names)]:
            seconds, peak = run(label, rep + 1)
            times[label].append(seconds)
            peaks[label] = peak if peaks[label] != peaks[label] else max(peaks[label], peak)
    median = {label: statistics.median(t) for label, t in times.items()}
    base = median["base"]
    spread = f"{(max(times['base']) - min(times['base'])) / base * 100:.1f}%" \
        if len(times["base"]) > 1 else "n/a, 1 rep"
    hyper = sum(p.numel() for p in one.module.parameters())
    batch = "cond+uncond batch" if cfg != 1 else "CFG 1: cond only"
    out(f"\nsampling {name}: {px} px, {args.dtype_name(name)}, {args.steps} steps x "
        f"{args.reps} interleaved reps, {batch}, Apply Dynamic LoRA {mode}; hypernetwork "
        f"{hyper / 1e6:.1f}M parameters (fp32, {trigger.get('trigger', 'clip-pooled')})")
    out(f"  {'variant':11s} {'s/step':>9s} {'x base':>7s} {'peak VRAM GiB':>14s} "
        f"{'ComfyUI counts loaded GiB':>26s}")
    for label in names:
        out(f"  {label:11s} {median[label]:9.4f} {median[label] / base:7.3f} "
            f"{gib(peaks[label]):>14s} {counted.get(label, math.nan):26.3f}")
    ratio = median["unhype-1"] / base
    out(f"  target Apply Dynamic LoRA <= 1.03x base: {ratio:.3f}x "
        f"({'OK' if ratio <= 1.03 else 'ABOVE'}); 100 vs 1 concept: "
        f"{median['unhype-100'] / median['unhype-1']:.3f}x (base spread over reps "
        f"{spread}); hook LoRA {median['hook-lora'] / base:.3f}x base")


def training_check(name, model, pack, args, clock, out):
    """Step time and peak memory: UnHype Trainer step vs static ESD-x, checkpointing on/off."""
    import torch

    family = FAMILIES[name]
    denoiser_mod = sys.modules[pack.__name__ + ".nodes.training.denoiser"]
    core = sys.modules[pack.__name__ + ".unhype"]
    settings_mod = importlib.import_module(pack.__name__ + ".unhype.settings")
    trigger_mod = importlib.import_module(pack.__name__ + ".unhype.trigger")
    training = importlib.import_module(pack.__name__ + ".unhype.training")
    prompts = importlib.import_module(pack.__name__ + ".unhype.prompts")
    unet = TINY[name] if args.cpu_smoke else family.unet
    px = 64 if args.cpu_smoke else family.resolution
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = denoiser_mod.ComfyDenoiser(
            model, RandomClip(unet, family.tokens), resolution=px, family=family.key,
            sampling_steps=args.sampling_steps)
        settings = settings_mod.TrainingSettings(concepts="a zebra").validate()
        kind = settings_mod.trigger_kind(settings, family.key)
        trigger = trigger_mod.measure_trigger(denoiser, kind)
        net_config, config = settings_mod.build_configs(
            settings, family.key, prompts.builtin_retain_prompts(), trigger)
        if args.cpu_smoke:
            net_config = dataclasses.replace(net_config, hidden=args.hidden)
        config = dataclasses.replace(config, xt_cache_size=1)  # time steps, not x_t sampling
        targets = core.targets_from_preset(denoiser.lora_root, family.preset)
        trainer = training.Trainer(denoiser, net_config, targets,
                                   core.NetworkInfo(family.key, family.preset), config)
        hyper = sum(p.numel() for p in trainer.module.parameters())
        trainer.train_step()  # samples and caches the x_t both variants use
        x_t, t, template = trainer.xt_cache["0"][0]
        concept = config.concepts[0]
        prompt = prompts.fill(template, concept.name)
        anchor = prompts.fill(template, concept.anchor)
        gen = torch.Generator().manual_seed(0)
        rank = net_config.rank
        static = {tg.name: core.RowFactors(
            (torch.rand(1, rank, tg.in_features, generator=gen) / rank**0.5)
            .to(denoiser.device).requires_grad_(True),
            torch.zeros(1, tg.delta_features, rank, device=denoiser.device).requires_grad_(True))
            for tg in targets}
        optimizer = torch.optim.Adam([x for f in static.values() for x in (f.down, f.up)],
                                     lr=config.learning_rate)

        def esd_step():
            with torch.no_grad():
                anchored = denoiser.predict(x_t, t, [anchor])
                target = anchored - config.eta * (denoiser.predict(x_t, t, [prompt]) - anchored)
            with core.row_lora(denoiser.lora_root, targets, static):
                predicted = denoiser.predict(x_t, t, [prompt])
            loss = torch.nn.functional.mse_loss(predicted.float(), target.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        before = [p.detach().clone() for p in trainer.module.parameters()]
        rows, ratios = [], {}
        for checkpointing in (True, False):
            denoiser.gradient_checkpointing = checkpointing
            times = {}
            for label, step in (("esd-x", esd_step), ("unhype", trainer.train_step)):
                try:
                    for _ in range(args.warmup):
                        step()
                    clock.reset_peak()
                    seconds = []
                    for _ in range(args.train_steps):
                        start = clock.now()
                        step()
                        seconds.append(clock.now() - start)
                    times[label] = statistics.median(seconds)
                    rows.append((label, checkpointing, times[label], clock.peak_gib()))
                except torch.OutOfMemoryError:
                    rows.append((label, checkpointing, math.nan, math.inf))
                    clock.reset_peak()
            if len(times) == 2:
                ratios[checkpointing] = times["unhype"] / times["esd-x"]
        moved = sum(float((p.detach() - b).abs().sum())
                    for p, b in zip(trainer.module.parameters(), before, strict=True))
    out(f"\ntraining {name}: {px} px, {args.dtype_name(name)}, hypernetwork {hyper / 1e6:.1f}M "
        f"parameters (fp32, {net_config.variant}, rank {net_config.rank}, hidden "
        f"{net_config.hidden}), {len(targets)} layers; first x_t sampling "
        f"{trainer.xt_seconds:.2f} s; median of {args.train_steps} steps")
    out(f"  {'step':7s} {'checkpointing':>13s} {'s/step':>9s} {'peak VRAM GiB':>14s}")
    for label, checkpointing, seconds, peak in rows:
        shown = "OOM" if peak == math.inf else gib(peak)
        out(f"  {label:7s} {'on' if checkpointing else 'off':>13s} {seconds:9.4f} {shown:>14s}")
    for checkpointing, ratio in ratios.items():
        out(f"  unhype / esd-x, checkpointing {'on' if checkpointing else 'off'}: {ratio:.2f}x "
            f"(target <= 1.3x: {'OK' if ratio <= 1.3 else 'ABOVE'})")
    out(f"  hypernetwork moved by sum |delta| = {moved:.3g}"
        + ("  <- NO UPDATE: gradients underflow?" if moved == 0 else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny models on the CPU, fp32, 2 steps: checks the code paths")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=10, help="sampling steps timed per run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved sampling runs")
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    parser.add_argument("--sampling-steps", type=int, default=50,
                        help="schedule length of the ESD x_t sampling")
    parser.add_argument("--hidden", type=int, default=512, help="sampling networks' width")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds after which no new section starts")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.steps, args.reps, args.train_steps, args.warmup = 2, 1, 1, 1
        args.sampling_steps, args.hidden = 4, 16
    started = time.perf_counter()
    import_pack(find_comfyui(), "cpu" if args.cpu_smoke else "auto")
    import comfy.model_management as mm
    import torch

    pack = sys.modules["comfyui_unhype"]
    device = mm.get_torch_device()
    if device.type != "cuda" and not args.cpu_smoke:
        sys.exit("gpu_check: no CUDA device (use --cpu-smoke for the CPU code-path check)")
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    args.dtype_name = lambda name: "fp32" if args.cpu_smoke else FAMILIES[name].dtype
    clock = Clock(device)
    lines = []

    def out(line):
        lines.append(line)
        print(line, flush=True)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    out(f"gpu_check on {gpu}, torch {torch.__version__}, ComfyUI at {find_comfyui()}")
    for name in [n.strip() for n in args.families.split(",") if n.strip()]:
        if name not in FAMILIES:
            sys.exit(f"gpu_check: unknown family {name!r}; choose from {sorted(FAMILIES)}")
        if time.perf_counter() - started > args.budget:
            out(f"\n{name}: skipped (time budget of {args.budget:.0f} s spent)")
            continue
        model = None
        try:
            model = build_model(name, args.cpu_smoke, dtypes[args.dtype_name(name)], device)
            params = sum(p.numel() for p in model.model.diffusion_model.parameters())
            out(f"\n== {name}: {params / 1e6:.0f}M parameters, built at "
                f"{time.perf_counter() - started:.0f} s")
            if FAMILIES[name].sampled:
                sampling_check(name, model, pack, args, clock, out)
            if not FAMILIES[name].entry.trains:
                out(f"training {name}: skipped (the Trainer does not train this family)")
            elif time.perf_counter() - started > args.budget:
                out(f"training {name}: skipped (time budget)")
            else:
                training_check(name, model, pack, args, clock, out)
        except torch.OutOfMemoryError as error:
            out(f"{name}: out of memory ({str(error).splitlines()[0]})")
        except Exception as error:  # report it and go on: one run should bring back everything
            traceback.print_exc()
            out(f"{name}: failed: {type(error).__name__}: {error}")
        finally:
            del model
            mm.unload_all_models()
            gc.collect()
            mm.soft_empty_cache()
    out(f"\ntotal {time.perf_counter() - started:.0f} s")
    print("\n==== report ====\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
