"""What the ESD target itself draws: sampling that follows it exactly, no network trained.

    python benchmarks/bench_target_oracle.py [--seed 0] [--samples 60] [--out FILE]

For every erased prompt's conditional row, at every sampling step, the base model's prediction
is replaced by the ESD target the Trainer fits, e_anchor - eta * (e_prompt - e_anchor), with the
anchor the Trainer's default (the prompt without the colour word); the other rows, and the
unconditional rows, stay the base model's. The images are judged as bench_erasure.py judges a
trained network (efficacy, generality, paraphrase, shape kept, relative to the base model on the
same prompts and noise). A trained network only approximates its target, so this is the bound
it is trained towards: how much of the picture a perfectly fitted network would keep at each
eta. "push after t" variants push only while the timestep is at or above t (the anchor alone
below), which a network whose LoRA does not depend on the timestep cannot follow.
"""

import argparse
import contextlib
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

#: (label, eta, timestep from which the push applies: 0 = every step)
VARIANTS = [("anchor only", 0.0, 0), ("eta 1", 1.0, 0), ("eta 1.5", 1.5, 0), ("eta 2", 2.0, 0),
            ("eta 3", 3.0, 0), ("eta 3, push at t >= 500 only", 3.0, 500)]


class FollowTarget:
    """A sampling patch (unet_context) that replaces the erased prompts' conditional rows by the
    ESD target; the world's CFG layout is N conditional rows, then N unconditional ones."""

    def __init__(self, world, words: tuple[str, ...], eta: float, push_from: int):
        self.world, self.eta, self.push_from = world, eta, push_from
        self.pattern = re.compile(r"\b(" + "|".join(words) + r")\b ?")

    def anchor(self, prompt: str) -> str:
        return re.sub(r"\ban ([^aeiou])", r"a \1", self.pattern.sub("", prompt)).strip()

    def __call__(self, rows, cond_mask):
        return self._following(rows)

    @contextlib.contextmanager
    def _following(self, rows):
        import torch

        unet, base_forward = self.world.unet, self.world.unet.forward
        erased = [i for i in range(len(rows) // 2) if self.pattern.search(rows[i])]

        def forward(x, t, states):
            out = base_forward(x, t, states)
            if not erased:
                return out
            anchors = self.world.denoiser._text([self.anchor(rows[i]) for i in erased])[0]
            anchored = base_forward(x[erased], t[erased], anchors)
            eta = self.eta * (t[erased] >= self.push_from).float().view(-1, 1, 1, 1)
            out = out.clone()
            out[erased] = anchored - eta * (out[erased] - anchored)
            return out

        unet.forward = forward
        try:
            with torch.no_grad():
                yield
        finally:
            del unet.forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=60, help="per erased set")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "target_oracle.json"))
    args = parser.parse_args()

    import torch

    from unhype.world import load_world
    from unhype.world.erasure import ErasureTask, accuracies, draw_prompts, scores
    from unhype.world.vocabulary import COLOURS

    torch.set_num_threads(1)
    world = load_world()
    red = next(c for c in COLOURS if c.word == "red")
    task = ErasureTask(["red"])
    drawn = draw_prompts(task, args.samples, args.seed)
    erased_sets = [name for name in drawn if name != "others"]
    before = accuracies(world, drawn, args.seed, names=erased_sets)
    rows = []
    for label, eta, push_from in VARIANTS:
        patch = FollowTarget(world, red.words, eta, push_from)
        after = accuracies(world, drawn, args.seed, patch, names=erased_sets)
        # the other colours' rows are never replaced (specificity 1 by construction): they are
        # not sampled, and count as kept in H_o
        untouched = {"others": {"pixel": 1.0, "clip": 1.0}}
        pixel, clip = (scores({**before, **untouched}, {**after, **untouched}, judge)
                       for judge in ("pixel", "clip"))
        measured = {k: v for k, v in pixel.items() if k != "specificity"}
        rows.append({"variant": label, "eta": eta, "push_from": push_from, "pixel": measured,
                     "clip_shape_kept": clip["shape_kept"]})
        print(f"{label}: " + ", ".join(f"{k} {100 * v:.0f}" for k, v in measured.items()),
              flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"seed": args.seed, "samples": args.samples, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
