"""Training cost: one UnHype Trainer step against one static ESD-x LoRA step, as a ratio.

Not a test. Both steps train on the same layers, the same ESD target and the same x_t (sampled
once by the Trainer's first step, then reused by both), so only the step itself is timed:

  unhype  `Trainer.train_step` with the Trainer's defaults (trajectory objective): hypernetwork
          forward H(c,s), ESD targets, the LoRA'd forward, the ESD backward into the
          hypernetwork, the trajectory term (a second hypernetwork forward H(c,s+1)) and its
          backward, the removal Adam step, then the retention step (a batch of retain prompts
          through the hypernetwork, backward, its own Adam step).
  esd-x   one rank-r LoRA (r = the Trainer's rank) on the same layers: ESD targets, the LoRA'd
          forward, backward, Adam (unhype/world/erasure.py train_static_esd).

Every retain prompt is embedded before the timed steps (the Trainer caches embeddings; a long
run pays each prompt's encoding once). The steps run interleaved (A B A B ...); the first
--warmup pairs are discarded; each step's seconds are the median over --steps pairs, the ratio
is unhype / esd-x of those medians. The UnHype step is broken down by phase (instance wrappers
and hooks on this run's own Trainer; the backward passes are the time between the calls they
sit between), top costs first.

Models: the proving-ground world (the proving-ground defaults, unhype/world/erasure.py) and a
real-size SD1.5 UNet with random weights (860M parameters, fp32, as ComfyUI runs it on a CPU) at
a 16x16 latent (--sd15-px 128) through a real ComfyUI and the pack's ComfyDenoiser with the node's
defaults (paper variant, gradient checkpointing on); it is skipped with a message when no
ComfyUI is found.

    python benchmarks/bench_training_cost.py --steps 20 --threads 2
    python benchmarks/bench_training_cost.py --model world --out benchmarks/results/cost.json
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.3
#: hypernetwork width of the --smoke SD1.5
SMOKE_HIDDEN = 16
#: ESD partial-sampling schedule of the SD1.5 x_t: it is sampled once, outside the timed steps,
#: and a step costs the same wherever on the schedule x_t lies
SD15_SAMPLING_STEPS = 10

# Gaps between the wrapped calls of one UnHype step, named by the call they end at: the
# backward passes run there (training.py calls `.backward()` directly).
GAP_BEFORE = {
    "_trajectory_loss": "ESD backward (UNet + hypernetwork, retain_graph)",
    "_update removal": "trajectory term backward",
    "_update retention": "retention backward",
}
CALL_LABELS = {
    "_draw_removals": "draws (x_t cache, prompts)",
    "_draw_retention": "draws (x_t cache, prompts)",
    "_embed": "prompt embeddings",
    "_esd_target": "ESD targets (2 frozen forwards)",
    "_esd_loss": "ESD forward with the LoRA",
    "_trajectory_loss": "trajectory term (forward)",
    "_retention_loss": "retention loss (forward)",
    "_update removal": "removal Adam step",
    "_update retention": "retention Adam step",
}
HYPERNET_BY_CALLER = {
    None: "hypernetwork forward H(c,s)",
    "_trajectory_loss": "hypernetwork forward H(c,s+1) (trajectory)",
    "_retention_loss": "hypernetwork forward, retention batch",
}


class StepTimeline:
    """Exclusive seconds per phase of `Trainer.train_step`, from wrappers on one Trainer."""

    def __init__(self, trainer):
        self.totals: dict[str, float] = {}
        self._stack: list[list] = []  # [key, start, seconds spent in children]
        self._last_top = 0.0
        for name in ("_draw_removals", "_draw_retention", "_embed", "_esd_target", "_esd_loss",
                     "_trajectory_loss", "_retention_loss", "_update"):
            setattr(trainer, name, self._wrap(name, getattr(trainer, name)))
        trainer.module.register_forward_pre_hook(lambda *_: self._enter(self._hypernet_key()))
        trainer.module.register_forward_hook(lambda *_: self._exit())
        self._step = trainer.train_step

    def _hypernet_key(self) -> str:
        caller = next((k for k, *_ in reversed(self._stack) if k in HYPERNET_BY_CALLER), None)
        return HYPERNET_BY_CALLER[caller]

    def _wrap(self, name, method):
        def timed(*args, **kwargs):
            key = f"{name} {args[0]}" if name == "_update" else name
            self._enter(key)
            try:
                return method(*args, **kwargs)
            finally:
                self._exit()
        return timed

    def _add(self, label: str, seconds: float) -> None:
        self.totals[label] = self.totals.get(label, 0.0) + seconds

    def _enter(self, key: str) -> None:
        now = time.perf_counter()
        if not self._stack:  # a top-level call: the gap before it is named after it
            self._add(GAP_BEFORE.get(key, "bookkeeping (checks, zero_grad)"),
                      now - self._last_top)
        self._stack.append([key, now, 0.0])

    def _exit(self) -> None:
        key, start, children = self._stack.pop()
        now = time.perf_counter()
        self._add(CALL_LABELS.get(key, key), now - start - children)
        if self._stack:
            self._stack[-1][2] += now - start
        else:
            self._last_top = now

    def step(self) -> dict[str, float]:
        """One train_step; its phases' seconds (they sum to the step's wall time)."""
        self.totals = {}
        self._last_top = time.perf_counter()
        self._step()
        self._add("bookkeeping (checks, zero_grad)", time.perf_counter() - self._last_top)
        return self.totals


def static_esd_step(trainer, core, fill):
    """A static ESD-x step on the Trainer's layers, target and cached x_t, phases timed."""
    import torch

    denoiser, config = trainer.denoiser, trainer.config
    x_t, t, template = trainer.xt_cache["0"][0]
    x_t, t = x_t.to(trainer.device), t.to(trainer.device)
    concept = config.concepts[0]
    prompt, anchor = fill(template, concept.name), fill(template, concept.anchor)
    rank, rows = trainer.module.config.rank, x_t.shape[0]
    gen = torch.Generator().manual_seed(0)
    factors = {
        tg.name: core.RowFactors(
            (torch.randn(1, rank, tg.in_features, generator=gen) / tg.in_features**0.5)
            .to(trainer.device).requires_grad_(True),
            torch.zeros(1, tg.delta_features, rank, device=trainer.device).requires_grad_(True))
        for tg in trainer.module.targets}
    optimizer = torch.optim.Adam([x for f in factors.values() for x in (f.down, f.up)],
                                 lr=config.learning_rate)

    def step() -> dict[str, float]:
        stamps = [time.perf_counter()]
        with torch.no_grad():
            anchored = denoiser.predict(x_t, t, [anchor] * rows)
            target = anchored - config.eta * (denoiser.predict(x_t, t, [prompt] * rows)
                                              - anchored)
        stamps.append(time.perf_counter())
        expanded = {n: core.RowFactors(f.down.expand(rows, -1, -1), f.up.expand(rows, -1, -1))
                    for n, f in factors.items()}
        with core.row_lora(denoiser.lora_root, trainer.module.targets, expanded):
            predicted = denoiser.predict(x_t, t, [prompt] * rows)
        loss = torch.nn.functional.mse_loss(predicted.float(), target.float())
        stamps.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stamps.append(time.perf_counter())
        optimizer.step()
        stamps.append(time.perf_counter())
        phases = ("ESD targets (2 frozen forwards)", "ESD forward with the LoRA", "backward",
                  "Adam step")
        return {p: b - a for p, a, b in zip(phases, stamps, stamps[1:])}

    return step


def measure(name: str, trainer, core, fill, steps: int, warmup: int, describe: dict) -> dict:
    """Interleaved unhype / esd-x steps on one Trainer; the figures as a dict (also printed)."""
    started = time.perf_counter()
    trainer.train_step()  # samples and caches the one x_t both steps use
    first = time.perf_counter() - started
    # every retain prompt encoded once, as a long run has them: a prompt's first encoding is a
    # one-time cost that would otherwise land in the few steps timed here
    trainer._embed(trainer.config.retain_prompts)
    if list(trainer.xt_cache) != ["0"] or len(trainer.xt_cache["0"]) != 1:
        raise RuntimeError("the Trainer must cache exactly one x_t (xt_cache_size=1, 1 concept)")
    timeline = StepTimeline(trainer)
    static = static_esd_step(trainer, core, fill)
    runs = {"unhype": [], "esd-x": []}
    for pair in range(warmup + steps):
        for label, step in (("unhype", timeline.step), ("esd-x", static)):
            start = time.perf_counter()
            phases = step()
            seconds = time.perf_counter() - start
            if pair >= warmup:
                runs[label].append((seconds, phases))
        print(f"  {name}: pair {pair + 1}/{warmup + steps}"
              + (" (warm-up)" if pair < warmup else ""), file=sys.stderr, flush=True)
    result = {"model": name, **describe, "steps": steps, "warmup": warmup,
              "first_step_seconds": first}
    for label, rows in runs.items():
        result[label] = {
            "seconds": statistics.median(s for s, _ in rows),
            "spread": (max(s for s, _ in rows) - min(s for s, _ in rows)),
            "phases": {p: statistics.median(ph.get(p, 0.0) for _, ph in rows)
                       for p in dict.fromkeys(p for _, ph in rows for p in ph)},
        }
    result["ratio"] = result["unhype"]["seconds"] / result["esd-x"]["seconds"]
    report(result)
    return result


def report(r: dict) -> None:
    details = ", ".join(f"{k} {v}" for k, v in r.items() if k not in (
        "model", "unhype", "esd-x", "ratio", "steps", "warmup", "first_step_seconds"))
    print(f"\n{r['model']}: {details}; median of {r['steps']} interleaved pairs after "
          f"{r['warmup']} warm-up pairs (first step, x_t sampling included: "
          f"{r['first_step_seconds']:.2f} s)")
    for label in ("unhype", "esd-x"):
        print(f"  {label:7s} {r[label]['seconds']:9.4f} s/step  (max - min "
              f"{r[label]['spread']:.4f} s)")
    verdict = "OK" if r["ratio"] <= TARGET_RATIO else "ABOVE"
    print(f"  ratio unhype / esd-x: {r['ratio']:.2f}x (target <= {TARGET_RATIO}x: {verdict})")
    for label in ("unhype", "esd-x"):
        total = r[label]["seconds"]
        print(f"  {label} step by phase (median seconds, share of the median step):")
        for phase, seconds in sorted(r[label]["phases"].items(), key=lambda kv: -kv[1]):
            print(f"    {phase:48s} {seconds:9.4f}  {seconds / total:6.1%}")


def world_run(args) -> dict:
    import unhype as core
    from unhype.prompts import fill
    from unhype.world import load_world
    from unhype.world.erasure import ErasureTask, unhype_trainer

    world = load_world()
    trainer = unhype_trainer(world, ErasureTask(["red"]), xt_cache_size=1)
    hyper = sum(p.numel() for p in trainer.module.parameters())
    describe = {"hypernetwork_params": hyper, "variant": trainer.module.config.variant,
                "rank": trainer.module.config.rank, "layers": len(trainer.module.targets),
                "retain_batch": trainer.config.retain_batch}
    return measure("world", trainer, core, fill, args.steps, args.warmup, describe)


def sd15_run(args) -> dict | None:
    """The SD1.5 run, or None (with a message) when no ComfyUI is found."""
    try:
        from unhype.headless import ConfigError, find_comfyui, import_pack
        comfyui = find_comfyui()
    except ConfigError as error:
        print(f"\nsd15: skipped: no ComfyUI found ({error})")
        return None
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check  # the random-weight SD1.5 builder and the stand-in CLIP

    import_pack(comfyui, "cpu")
    import torch

    pack = sys.modules["comfyui_unhype"]
    core = sys.modules[pack.__name__ + ".unhype"]
    settings_mod = importlib.import_module(pack.__name__ + ".unhype.settings")
    trigger_mod = importlib.import_module(pack.__name__ + ".unhype.trigger")
    training = importlib.import_module(pack.__name__ + ".unhype.training")
    prompts = importlib.import_module(pack.__name__ + ".unhype.prompts")
    denoiser_mod = sys.modules[pack.__name__ + ".nodes.training.denoiser"]
    family = gpu_check.FAMILIES["sd15"]
    unet = gpu_check.TINY["sd15"] if args.smoke else family.unet
    model = gpu_check.build_model("sd15", args.smoke, torch.float32, torch.device("cpu"))
    with torch.inference_mode(False), torch.enable_grad():
        denoiser = denoiser_mod.ComfyDenoiser(
            model, gpu_check.RandomClip(unet, family.tokens), family=family.key,
            resolution=args.sd15_px, sampling_steps=SD15_SAMPLING_STEPS)
        settings = settings_mod.TrainingSettings(concepts="a zebra").validate()
        kind = settings_mod.trigger_kind(settings, family.key)
        trigger = trigger_mod.measure_trigger(denoiser, kind)
        net_config, config = settings_mod.build_configs(
            settings, family.key, prompts.builtin_retain_prompts(), trigger)
        if args.smoke:
            net_config = dataclasses.replace(net_config, hidden=SMOKE_HIDDEN)
        config = dataclasses.replace(config, xt_cache_size=1)
        targets = core.targets_from_preset(denoiser.lora_root, family.preset)
        trainer = training.Trainer(denoiser, net_config, targets,
                                   core.NetworkInfo(family.key, family.preset), config)
        describe = {
            "unet_params": sum(p.numel() for p in denoiser.lora_root.parameters()),
            "latent": list(denoiser.latent_shape),
            "gradient_checkpointing": denoiser.gradient_checkpointing,
            "hypernetwork_params": sum(p.numel() for p in trainer.module.parameters()),
            "variant": net_config.variant, "rank": net_config.rank, "layers": len(targets),
            "retain_batch": config.retain_batch, "comfyui": str(comfyui), "smoke": args.smoke}
        return measure("sd15", trainer, core, prompts.fill, args.steps, args.warmup, describe)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("world", "sd15", "both"), default="both")
    parser.add_argument("--steps", type=int, default=20, help="timed (unhype, esd-x) pairs")
    parser.add_argument("--warmup", type=int, default=2, help="discarded pairs before them")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--sd15-px", type=int, default=128,
                        help="SD1.5 training resolution in pixels (128: a 16x16 latent)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny SD1.5 (gpu_check.py --cpu-smoke's shapes): checks the code "
                        "path in seconds; its times mean nothing")
    parser.add_argument("--out", help="write the figures as JSON to this file (e.g. "
                        "benchmarks/results/training_cost.json); default: print only")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.sd15_px < 8 or args.sd15_px % 8:
        parser.error("--sd15-px must be a positive multiple of 8 (the VAE's downscale)")
    import torch

    torch.set_num_threads(args.threads)
    print(f"bench_training_cost: torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s)", flush=True)
    results = []
    if args.model in ("world", "both"):  # first: importing the pack takes the repo off sys.path
        results.append(world_run(args))
    if args.model in ("sd15", "both"):
        results.append(sd15_run(args))
    results = [r for r in results if r is not None]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__,
                                   "target_ratio": TARGET_RATIO, "runs": results}, indent=2))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
