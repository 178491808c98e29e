"""Erasing one colour at other ESD pushes (eta) and training lengths: what is erased, what is kept.

    python benchmarks/bench_eta_steps.py [--seeds 0] [--grid 3:1000 1.5:2000 ...] [--out FILE]

Each grid point trains the Trainer's proving-ground defaults with that eta and step count
(nothing else changed) to erase red, and judges it as bench_erasure.py does (pixel judge; the
same prompts and noise as the base model). How the proving ground's default (eta 1.5, 2000
steps) was chosen: bench_target_oracle.py shows the target itself losing the shape as eta grows,
and this shows how closely a trained network follows it.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GRID = ("3:1000", "3:3000", "1:1000", "1:3000", "1.5:1000", "1.5:2000", "1.5:3000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--grid", nargs="+", default=list(GRID), metavar="ETA:STEPS")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    try:
        grid = [(float(eta), int(steps)) for eta, steps in (g.split(":") for g in args.grid)]
    except ValueError:
        parser.error("--grid takes ETA:STEPS pairs, e.g. 1.5:2000")

    import torch

    from unhype.world import load_world
    from unhype.world.erasure import (
        ErasureTask,
        accuracies,
        draw_prompts,
        scores,
        train_unhype,
        unhype_patch,
    )

    torch.set_num_threads(1)
    world, task, rows = load_world(), ErasureTask(["red"]), []
    for seed in args.seeds:
        drawn = draw_prompts(task, args.samples, seed)
        before = accuracies(world, drawn, seed)
        for eta, steps in grid:
            started = time.perf_counter()
            network, _ = train_unhype(world, task, seed=seed, eta=eta, steps=steps)
            after = accuracies(world, drawn, seed, unhype_patch(world, network))
            pixel = scores(before, after, "pixel")
            rows.append({"seed": seed, "eta": eta, "steps": steps, "pixel": pixel,
                         "erase_norm": network.info.training["separation"]["erase_norm"],
                         "seconds": round(time.perf_counter() - started)})
            print(f"seed {seed} eta {eta} steps {steps}: H_o {100 * pixel['h_o']:.1f}, shape "
                  f"kept {100 * pixel['shape_kept']:.1f}", flush=True)
            if args.out:
                with open(args.out, "w") as handle:
                    json.dump({"samples": args.samples, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
