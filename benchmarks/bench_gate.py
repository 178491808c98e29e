"""The gate (unhype/gate.py) on the proving ground: untouched prompts give the base model's image
bit for bit, and what the gate costs generality.

    python benchmarks/bench_gate.py [--seed 0] [--samples 60] [--builtin-retain] [--network F]

Trains the default network for 'red' (anchor '-', the UnHype Trainer's proving-ground defaults;
with --builtin-retain the built-in retain list is kept too, as the UnHype Trainer does by
default; --network loads a saved one instead), then prints
- the gate's threshold and the LoRA norms of each prompt set (min, median, max);
- identical: the share of images bit-identical to the base model's at the same seed, for every
  kept prompt of the world (ErasureTask.prompt_sets()['others']), the built-in retain list
  through the world's tiny CLIP, 120 kept prompts in wordings no training saw and the shape-only
  prompts;
- scores (tiny CLIP judge, paired with the base model) of the same network with and without its
  gate on draw_prompts' sets, and the gate's cost in points.
"""

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def unseen_kept_wordings(task) -> list[str]:
    """Kept colours in wordings no training saw: their synonyms, paraphrase templates, shape
    synonyms."""
    from unhype.world.vocabulary import COLOURS, PARAPHRASES, SHAPES, TEMPLATES

    kept = [c for c in COLOURS if c.word in task.kept]
    return ([t.format(colour=w, shape=s.word) for c in kept for w in c.synonyms
             for t in TEMPLATES for s in SHAPES]
            + [t.format(colour=c.word, shape=s.word) for c in kept for t in PARAPHRASES
               for s in SHAPES]
            + [t.format(colour=c.word, shape=w) for c in kept for s in SHAPES
               for w in s.synonyms for t in TEMPLATES])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=60, help="per set, for the scores")
    parser.add_argument("--builtin-retain", action="store_true")
    parser.add_argument("--network", help="a saved proving-ground network for 'red'")
    parser.add_argument("--save", help="write the trained network here")
    args = parser.parse_args()

    import dataclasses

    import torch

    from unhype.fileformat import load_unhype, save_unhype
    from unhype.hypernet import lora_norm
    from unhype.network import UnHypeNetwork
    from unhype.prompts import DROP_ANCHOR, builtin_retain_prompts
    from unhype.world import load_world
    from unhype.world.erasure import (
        ErasureTask,
        accuracies,
        draw_prompts,
        generate,
        identical_share,
        scores,
        train_unhype,
        unhype_patch,
    )
    from unhype.world.vocabulary import SHAPE_ONLY_TEMPLATES, SHAPES

    world, task = load_world(), ErasureTask(["red"])
    if args.network:
        network = load_unhype(args.network)
    else:
        network, _ = train_unhype(world, task, anchor=DROP_ANCHOR, seed=args.seed,
                                  builtin_retain=args.builtin_retain)
        if args.save:
            save_unhype(args.save, network)
    ungated = UnHypeNetwork(network.config, network.targets,
                            dataclasses.replace(network.info, gate_threshold=None),
                            network.module)
    sets = {name: [p for p, _, _ in items] for name, items in task.prompt_sets().items()}
    sets["builtin retain"] = builtin_retain_prompts()
    sets["kept, unseen wordings"] = unseen_kept_wordings(task)
    sets["shape only"] = [t.format(shape=w) for s in SHAPES for w in s.words
                          for t in SHAPE_ONLY_TEMPLATES]
    result = {"gate_threshold": network.info.gate_threshold,
              "activation_reference": network.info.activation_reference, "norms": {}}
    for name, prompts in sets.items():
        with torch.no_grad():
            norms = lora_norm(network.module(world.denoiser.embed(prompts)))
        result["norms"][name] = [round(float(v), 4)
                                 for v in (norms.min(), norms.median(), norms.max())]

    print(json.dumps({k: result[k] for k in ("gate_threshold", "norms")}), file=sys.stderr,
          flush=True)
    result["identical"] = {}
    sets["kept, unseen wordings"] = random.Random(args.seed).sample(sets["kept, unseen wordings"],
                                                                    120)
    for name in ("others", "builtin retain", "kept, unseen wordings", "shape only"):
        before = generate(world, sets[name], args.seed)
        after = generate(world, sets[name], args.seed, unhype_patch(world, network))
        result["identical"][name] = round(identical_share(before, after), 4)
        print(f"identical, {name}: {result['identical'][name]}", file=sys.stderr, flush=True)

    drawn = draw_prompts(task, args.samples, args.seed)
    base = accuracies(world, drawn, args.seed)
    with_gate = scores(base, accuracies(world, drawn, args.seed, unhype_patch(world, network)),
                       "clip")
    without = scores(base, accuracies(world, drawn, args.seed, unhype_patch(world, ungated)),
                     "clip")
    result["scores_with_gate"] = {k: round(v, 4) for k, v in with_gate.items()}
    result["scores_without_gate"] = {k: round(v, 4) for k, v in without.items()}
    result["gate_cost_points"] = {k: round(100 * (without[k] - with_gate[k]), 2)
                                  for k in ("generality", "paraphrase_efficacy", "efficacy",
                                            "specificity", "h_o")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
