"""One network for many concepts: the paper's celebrity protocol on the identities world.

    python benchmarks/bench_identities.py [--counts 1 5 10 20] [--steps 1000 2000 4000]
                                          [--samples 50] [--seed 0] [--out DIR]
    python benchmarks/bench_identities.py --merge DIR_SEED0 DIR_SEED1 --out DIR

For each number of erased identities N (the first N of the erasable half; the other half is kept
and is the retain set), one UnHype network with the UnHype Trainer's proving-ground defaults
(removal draws following the concept count) and one static ESD-x LoRA (rank 4, the same eta)
are trained for the first --steps
(default 1000; 0: the Trainer's); at the largest N the network is also trained for every other
--steps, to show how steps must grow with concepts.
Judged against the base model on the same prompts and noise (unhype/world/identities.py:
identity_scores). Then sampling time with the largest-N network vs the 1-identity one.
Writes identities.json and identities.md to --out and prints the table; --merge puts runs
with other seeds into one table (mean, min..max); its timing line is the first run's.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SCORES = ("acc_erased", "acc_kept", "h_o", "kept_vs_base", "generality", "paraphrase_efficacy",
          "looks_kept")


def rows(counts: list[int], steps: list[int]) -> list[tuple[str, int, int]]:
    """(method, erased count, training steps) per table row."""
    result = []
    for count in counts:
        result += [("static ESD-x", count, steps[0]), ("UnHype", count, steps[0])]
    result += [("UnHype", max(counts), s) for s in steps[1:]]
    return result


def run(counts: list[int], steps: list[int], samples: int, seed: int, out: str,
        timing_prompts: int, removal_draws: int = 0) -> dict:
    from unhype.families import resolve
    from unhype.settings import auto_removal_draws
    from unhype.world import load_world
    from unhype.world.erasure import (
        accuracies,
        draw_prompts,
        train_static_esd,
        train_unhype,
        unhype_patch,
    )
    from unhype.world.identities import ERASABLE, WEIGHTS_DIR, IdentityTask, identity_scores

    world = load_world(weights_dir=WEIGHTS_DIR)
    eta = resolve("proving-ground", {})["eta"]  # the Trainer's, for ESD-x too
    baselines, results, networks = {}, [], {}
    for method, count, step_count in rows(counts, steps):
        task = IdentityTask([i.name for i in ERASABLE[:count]])
        drawn = draw_prompts(task, samples, seed)
        if count not in baselines:
            baselines[count] = accuracies(world, drawn, seed)
        started = time.perf_counter()
        draws = 1 if method == "static ESD-x" else removal_draws or auto_removal_draws(count)
        if method == "static ESD-x":
            patch = train_static_esd(world, task, steps=step_count, seed=seed,
                                     eta=eta).patch(world)
        else:
            network = train_unhype(world, task, seed=seed, steps=step_count,
                                   removal_draws=draws)[0]
            networks.setdefault(count, network)
            patch = unhype_patch(world, network)
        seconds = time.perf_counter() - started
        after = accuracies(world, drawn, seed, patch)
        row = {"method": method, "erased": count, "steps": step_count, "removal_draws": draws,
               "seed": seed,
               "train_seconds": round(seconds, 1), **identity_scores(baselines[count], after),
               "accuracy_before": baselines[count], "accuracy_after": after}
        results.append(row)
        write(out, results, {}, quiet=True)
        print(f"{method} N={count} steps={step_count}: H_o {row['h_o']:.3f} acc_erased "
              f"{row['acc_erased']:.3f} acc_kept {row['acc_kept']:.3f}, {seconds:.0f}s",
              flush=True)
    timing = sampling_cost(world, networks[min(counts)], networks[max(counts)], timing_prompts)
    return {"rows": results, "sampling_seconds": timing}


def sampling_cost(world, smallest, largest, count: int) -> dict:
    """Seconds to sample `count` kept-name prompts: base model, the network of the fewest erased
    identities, the network of the most; interleaved three times, the median of each."""
    from unhype.world.erasure import generate, unhype_patch
    from unhype.world.identities import KEPT, NAME_TEMPLATES

    prompts = [NAME_TEMPLATES[k % len(NAME_TEMPLATES)].format(name=KEPT[k % len(KEPT)].name)
               for k in range(count)]
    patches = {"base": None, "fewest erased": unhype_patch(world, smallest),
               "most erased": unhype_patch(world, largest)}
    times = {name: [] for name in patches}
    for _ in range(3):
        for name, patch in patches.items():
            started = time.perf_counter()
            generate(world, prompts, 0, patch)
            times[name].append(time.perf_counter() - started)
    return {name: sorted(t)[1] for name, t in times.items()}


def table(results: list[dict]) -> str:
    """One line per (method, erased, steps): the mean over seeds, (min..max) when several."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        key = (row["method"], row["erased"], row["steps"], row.get("removal_draws", 1))
        groups.setdefault(key, []).append(row)
    names = {"acc_erased": "acc erased", "acc_kept": "acc kept", "h_o": "H_o",
             "kept_vs_base": "kept vs base", "paraphrase_efficacy": "paraphrase",
             "looks_kept": "looks kept"}
    lines = ["| method | erased | steps | draws | seeds | "
             + " | ".join(names.get(s, s) for s in SCORES) + " | train s |",
             "|" + "---|" * (len(SCORES) + 6)]
    for (method, erased, steps, draws), group in groups.items():
        cells = []
        for score in SCORES:
            values = [100 * r[score] for r in group]
            spread = f" ({min(values):.0f}..{max(values):.0f})" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{spread}")
        seconds = statistics.mean(r["train_seconds"] for r in group)
        lines.append(f"| {method} | {erased} | {steps} | {draws} | {len(group)} | "
                     + " | ".join(cells)
                     + f" | {seconds:.0f} |")
    return "\n".join(lines)


def write(out: str, results: list[dict], extra: dict, quiet: bool = False) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "identities.json"), "w") as handle:
        json.dump({"rows": results, **extra}, handle, indent=2)
    text = table(results)
    if extra.get("sampling_seconds"):
        seconds = extra["sampling_seconds"]
        text += f"\n\nsampling {extra['args']['timing_prompts']} prompts: " + ", ".join(
            f"{name} {value:.2f} s ({value / seconds['base']:.3f}x base)"
            for name, value in seconds.items())
    with open(os.path.join(out, "identities.md"), "w") as handle:
        handle.write(text + "\n")
    if not quiet:
        print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 4000],
                        help="training steps: the first for every count (0: the Trainer's "
                             "proving-ground default), the others at the largest count")
    parser.add_argument("--samples", type=int, default=50, help="per prompt set; kept gets 3x")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--removal-draws", type=int, default=0,
                        help="UnHype's removal draws per step (0: the Trainer's, one per "
                             "CONCEPTS_PER_DRAW concepts)")
    parser.add_argument("--timing-prompts", type=int, default=64,
                        help="prompts sampled to compare sampling time (fewest vs most erased)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "identities"))
    parser.add_argument("--merge", nargs="+", metavar="DIR",
                        help="merge the identities.json of earlier runs (seeds) into --out")
    args = parser.parse_args()
    if args.merge:
        runs = []
        for folder in args.merge:
            with open(os.path.join(folder, "identities.json")) as handle:
                runs.append(json.load(handle))
        timed = [r for r in runs if r.get("sampling_seconds")][:1]  # finished runs
        rows = {}  # a row run twice (the static ESD-x beside each run) counts once
        for earlier in runs:
            for row in earlier["rows"]:
                row = {"seed": earlier["args"]["seed"], **row}
                rows.setdefault(tuple(row.get(k) for k in ("method", "erased", "steps",
                                                             "removal_draws", "seed")), row)
        write(args.out, list(rows.values()),
              {"merged": args.merge, **{k: timed[0][k] for k in ("args", "sampling_seconds")
                                        if timed}})
        return
    if not all(1 <= c <= 20 for c in args.counts):
        parser.error("--counts must be between 1 and 20 (the erasable half of 40 identities)")
    if min(args.samples, args.threads, args.timing_prompts) < 1 or min(args.steps) < 0:
        parser.error("--samples, --threads and --timing-prompts must be at least 1, --steps at "
                     "least 0")
    import torch

    from unhype.families import resolve

    args.steps = [resolve("proving-ground", {"steps": s})["steps"] for s in args.steps]
    torch.set_num_threads(args.threads)
    result = run(sorted(set(args.counts)), args.steps, args.samples, args.seed, args.out,
                 args.timing_prompts, args.removal_draws)
    write(args.out, result["rows"], {"args": vars(args),
                                     "sampling_seconds": result["sampling_seconds"]})


if __name__ == "__main__":
    main()
