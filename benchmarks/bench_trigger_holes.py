"""The pooled-vector trigger's two holes on the proving ground, for both triggers.

    python benchmarks/bench_trigger_holes.py [--seed 0] [--samples 60] [--out FILE]

ComfyUI gives the pooled vector of an entry's FIRST text only: the first chunk of a long prompt,
the first prompt of a Conditioning (Concat). Both reach the model as more rows of the cond
tensor. The world has the same shape of it: "A | B" here is B's token states appended to A's
(its own start token first, as a second CLIP chunk or a Concat part is), with A's pooled vector.
Trains one network per trigger to erase red (Trainer defaults, same seed), then measures the red
rate (CLIP and pixel judges) of the base model and each network on
- erased: the erase prompts themselves;
- hidden: "<a prompt of another colour's shape, without colour> | <erase prompt>": the concept
  only in the second part (the hole);
- kept: "<shape-only prompt> | <kept-colour prompt>": must stay.
"""

import argparse
import json
import math
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

JOIN = " | "
FIRST_PARTS = ("a photo of a shape", "a picture", "an image on a dark background",
               "a drawing", "one shape in the picture")


def joined_denoiser(world):
    """The world's denoiser where "A | B" is a two-part conditioning with A's pooled vector."""
    import torch

    from unhype.world.denoiser import WorldDenoiser

    class Joined(WorldDenoiser):
        def _text(self, prompts):
            states, pooled = [], []
            for prompt in prompts:
                parts = prompt.split(JOIN)
                part_states, part_pooled = super()._text(parts)
                states.append(part_states.reshape(-1, part_states.shape[-1]))
                pooled.append(part_pooled[0])
            # a batch of unlike lengths (CFG's empty prompt) is repeated to a common length,
            # as ComfyUI's CONDCrossAttn does
            length = math.lcm(*(len(s) for s in states))
            states = [s.repeat(length // len(s), 1) for s in states]
            return torch.stack(states), torch.stack(pooled)

    return Joined(world.unet, world.clip)


def prompt_sets(task, per_set: int, seed: int) -> dict[str, list[tuple[str, int, int]]]:
    from unhype.world.erasure import draw_prompts

    drawn = draw_prompts(task, per_set, seed)
    picker = random.Random(seed + 1)
    hide = [(f"{picker.choice(FIRST_PARTS)}{JOIN}{p}", c, s) for p, c, s in drawn["erased"]]
    kept = [(f"{picker.choice(FIRST_PARTS)}{JOIN}{p}", c, s)
            for p, c, s in drawn["others"][:per_set]]
    return {"erased": drawn["erased"], "hidden": hide, "kept": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "trigger_holes.json"))
    args = parser.parse_args()
    import torch

    from unhype.world import load_world
    from unhype.world.erasure import ErasureTask, accuracies, train_unhype, unhype_patch

    torch.set_num_threads(args.threads)
    world = load_world()
    task = ErasureTask(["red"])
    sets = prompt_sets(task, args.samples, args.seed)
    networks = {}
    for trigger in ("clip-pooled", "cond-pooled"):
        started = time.perf_counter()
        networks[trigger], _ = train_unhype(world, task, seed=args.seed, trigger=trigger)
        print(f"trained {trigger} in {time.perf_counter() - started:.0f}s", flush=True)
    world.denoiser = joined_denoiser(world)
    result = {"seed": args.seed, "samples": args.samples, "base": accuracies(world, sets,
                                                                             args.seed)}
    for trigger, network in networks.items():
        result[trigger] = accuracies(world, sets, args.seed, unhype_patch(world, network))
    lines = ["| set | judge | base | clip-pooled | cond-pooled |", "|---|---|---|---|---|"]
    for name in sets:
        for judge in ("clip", "pixel"):
            cells = [f"{100 * result[k][name][judge]:.0f}%"
                     for k in ("base", "clip-pooled", "cond-pooled")]
            lines.append(f"| {name} | {judge} | " + " | ".join(cells) + " |")
    result["table"] = "\n".join(lines)
    print("share of images in the prompted colour\n" + result["table"])
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
