"""Erasure in the proving ground: UnHype variants against a static ESD-x LoRA, one table.

    python benchmarks/bench_erasure.py [--samples 100] [--steps 600] [--out benchmarks/results]

Every method is trained on the same world with the same seed and judged on the same prompts and
noise as the base model (paired). Scores are relative to the base model (see
unhype/world/erasure.py); raw accuracies go to the JSON file next to the table.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from unhype.world import load_world  # noqa: E402
from unhype.world.erasure import (  # noqa: E402
    ErasureTask,
    accuracies,
    draw_prompts,
    scores,
    train_static_esd,
    train_unhype,
    unhype_patch,
)

TASKS = {
    "1 concept (red)": ["red"],
    "3 concepts": ["red", "blue", "green"],
    "all but three (5)": ["red", "orange", "yellow", "green", "blue"],
}


def methods(steps: int):
    """(task, method label, trainer) for every row of the table."""
    single = TASKS["1 concept (red)"]
    return [
        (single, "static ESD-x LoRA (rank 4)",
         lambda w, t: train_static_esd(w, t, steps=steps).patch(w)),
        (single, "UnHype paper, trajectory",
         lambda w, t: unhype_patch(w, train_unhype(w, t, steps=steps)[0])),
        (single, "UnHype paper, direct",
         lambda w, t: unhype_patch(w, train_unhype(w, t, steps=steps, objective="direct")[0])),
        (single, "UnHype compact, trajectory",
         lambda w, t: unhype_patch(w, train_unhype(w, t, steps=steps, variant="compact")[0])),
        (single, "UnHype compact, direct",
         lambda w, t: unhype_patch(w, train_unhype(w, t, steps=steps, variant="compact",
                                                   objective="direct")[0])),
        (TASKS["3 concepts"], "UnHype paper, direct, 3 concepts",
         lambda w, t: unhype_patch(w, train_unhype(w, t, steps=steps, objective="direct")[0])),
        (TASKS["all but three (5)"], "UnHype paper, direct, all but three",
         lambda w, t: unhype_patch(w, train_unhype(w, t, steps=steps, objective="direct")[0])),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="per erased set; others get 3x")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = load_world()
    baselines, rows = {}, []
    for erase, label, train in methods(args.steps):
        task = ErasureTask(erase)
        drawn = draw_prompts(task, args.samples, args.seed)
        key = tuple(erase)
        if key not in baselines:
            baselines[key] = accuracies(world, drawn, args.seed)
        started = time.perf_counter()
        torch.manual_seed(args.seed)
        patch = train(world, task)
        seconds = time.perf_counter() - started
        after = accuracies(world, drawn, args.seed, patch)
        row = {"method": label, "erase": erase, "train_seconds": round(seconds, 1),
               "clip": scores(baselines[key], after, "clip"),
               "pixel": scores(baselines[key], after, "pixel"),
               "accuracy_before": baselines[key], "accuracy_after": after}
        rows.append(row)
        print(f"{label}: clip H_o {row['clip']['h_o']:.3f}, pixel H_o {row['pixel']['h_o']:.3f}",
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "erasure.json"), "w") as handle:
        json.dump({"args": vars(args), "rows": rows}, handle, indent=2)
    header = ("| method | erased | judge | efficacy | specificity | generality | paraphrase "
              "| H_o | train s |")
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        for judge in ("clip", "pixel"):
            s = row[judge]
            lines.append(
                f"| {row['method']} | {', '.join(row['erase'])} | {judge} | "
                f"{100 * s['efficacy']:.1f} | {100 * s['specificity']:.1f} | "
                f"{100 * s['generality']:.1f} | {100 * s['paraphrase_efficacy']:.1f} | "
                f"{100 * s['h_o']:.1f} | {row['train_seconds']:.0f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "erasure.md"), "w") as handle:
        handle.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
