"""Cost of a model load after many Apply Dynamic LoRA runs, as a ratio to a fresh process.

Not a test. Runs the real ComfyUI in-process (COMFYUI_PATH or ~/.cache/comfyui/ComfyUI, CPU). A
long-running server re-runs Apply Dynamic LoRA with other strengths and graphs and drops the old
MODELs while the network lives on. A loaded-model entry whose patcher died before its model makes
every later load_models_gpu run a full garbage collection and log "memory leak" (ComfyUI's
cleanup_models_gc), so loads get slower with every job. This times load_models_gpu of a fresh
clone of a tiny SD1.x UNet (median of --loads), then runs Apply Dynamic LoRA --runs times (each
sampled one step, so ComfyUI loads the network, then dropped), times the same load again and
prints the ratios (target: about 1), the dead entries and the "memory leak" lines seen.

    python benchmarks/bench_model_load.py [--runs 50] [--loads 20]
"""

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import comfy_host as ch  # noqa: E402  (the test harness helpers: in-process ComfyUI, builders)


class LeakLines(logging.Handler):
    """Counts ComfyUI's "WARNING, memory leak with model ..." log lines."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += "memory leak" in record.getMessage()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="Apply Dynamic LoRA runs")
    parser.add_argument("--loads", type=int, default=20, help="timed loads per state")
    args = parser.parse_args()

    path, why = ch.find_comfyui()
    if path is None:
        sys.exit(why)
    ns = ch.import_comfy(path)
    ch.install_core_finder()
    pack = ch.load_pack()
    core = sys.modules[pack.__name__ + ".unhype"]
    nodes = sys.modules[pack.__name__ + ".nodes"]
    modes = sys.modules[pack.__name__ + ".nodes.sampling.dynamic_lora"].MODES
    mm = ns.model_management
    leaks = LeakLines()
    logging.getLogger().addHandler(leaks)

    model = ch.build_tiny_sd1_model(ns, seed=0)
    dm = model.model.diffusion_model
    targets = core.targets_from_preset(dm, "sd-cross-kv")
    network = core.UnHypeNetwork(core.HyperNetConfig(embed_dim=64, rank=2, hidden=16), targets,
                                 core.NetworkInfo("sd1", "sd-cross-kv"))
    positive = nodes.UnHypeConditioner.execute(ch.make_cond(64, seed=1), network)[0]
    negative = nodes.UnHypeConditioner.execute(ch.make_cond(64, seed=2), network)[0]

    def load_seconds():
        """Median and best seconds of load_models_gpu for a new clone of the model (a real load:
        the previous clone's entry is replaced)."""
        times = []
        for _ in range(args.loads):
            clone = model.clone()
            start = time.perf_counter()
            mm.load_models_gpu([clone])
            times.append(time.perf_counter() - start)
        return statistics.median(times), min(times)

    ch.sample_steps(ns, model, positive, negative, steps=1)  # warm-up: the plain model sampled
    load_seconds()
    fresh = load_seconds()
    for run in range(args.runs):
        strength = 0.5 + 0.1 * (run % 10)
        mode = modes[run % len(modes)]
        patched = nodes.UnHypeApplyDynamicLoRA.execute(model, network, strength, mode)[0]
        if run % 3 == 1:
            patched = patched.clone()  # a model node after Apply Dynamic LoRA
        ch.sample_steps(ns, patched, positive, negative, steps=1)
        del patched
    dead = sum(entry.is_dead() for entry in mm.current_loaded_models)
    leak_lines_runs = leaks.count
    after = load_seconds()
    print(f"load_models_gpu of a tiny SD1.x UNet clone, median / best of {args.loads}: fresh "
          f"{fresh[0] * 1e3:.2f} / {fresh[1] * 1e3:.2f} ms, after {args.runs} Apply Dynamic LoRA "
          f"runs {after[0] * 1e3:.2f} / {after[1] * 1e3:.2f} ms")
    print(f"dead loaded-model entries: {dead}; 'memory leak' log lines: {leak_lines_runs} during "
          f"the runs, {leaks.count - leak_lines_runs} during the timed loads")
    print(f"ratio after / fresh: median {after[0] / fresh[0]:.2f}, best {after[1] / fresh[1]:.2f}")


if __name__ == "__main__":
    main()
