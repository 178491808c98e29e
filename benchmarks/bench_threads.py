"""Torch CPU threads for the proving ground: 1 thread against all cores, quiet and loaded.

    python benchmarks/bench_threads.py [--images 64] [--repeats 2]

Times what the demo spends its time on (sampling 25-step CFG images with the tiny world, and ESD
x_t partial samplings) in one process per thread count, then again while a second process keeps
one core busy ("loaded"). Prints seconds and the ratio all-cores / 1-thread measured in the same
run; the demo's one thread per process follows from it.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(__file__), "..")

WORK = """
import json, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from unhype.world import load_world
from unhype.world.erasure import generate
world = load_world()
prompts = ["a photo of a red circle"] * {images}
generate(world, prompts[:8], 0)  # warm-up
best_images = best_xt = float("inf")
for repeat in range({repeats}):
    started = time.perf_counter()
    generate(world, prompts, repeat)
    best_images = min(best_images, time.perf_counter() - started)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(repeat)
    for _ in range(4):
        world.denoiser.sample_xt(["a red square"], 1, generator)
    best_xt = min(best_xt, time.perf_counter() - started)
print(json.dumps({{"images": best_images, "xt": best_xt}}))
"""

BURN = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def measure(threads: int, images: int, repeats: int) -> dict:
    code = WORK.format(root=os.path.abspath(ROOT), threads=threads, images=images,
                       repeats=repeats)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    cores = os.cpu_count() or 1
    rows = []
    for state in ("quiet", "loaded"):
        burner = subprocess.Popen([sys.executable, "-c", BURN]) if state == "loaded" else None
        try:
            time.sleep(0.5 if burner else 0)
            one, every = measure(1, args.images, args.repeats), measure(cores, args.images,
                                                                         args.repeats)
        finally:
            if burner:
                burner.kill()
        rows.append((state, one, every))
    print(f"{args.images} images (25 steps, CFG) and 4 x_t samplings, best of {args.repeats}; "
          f"{cores} cores")
    print("| machine | work | 1 thread s | " f"{cores} threads s | {cores} / 1 |")
    print("|---|---|---|---|---|")
    for state, one, every in rows:
        for work in ("images", "xt"):
            print(f"| {state} | {work} | {one[work]:.2f} | {every[work]:.2f} | "
                  f"{every[work] / one[work]:.2f} |")


if __name__ == "__main__":
    main()
