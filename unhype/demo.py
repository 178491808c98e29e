"""`python -m unhype demo`: erase a colour in the bundled proving-ground world, show and measure it.

Writes to the output folder: `grid.png` (the same prompts and noise before and after, erased
prompts next to untouched ones), `metrics.json` (efficacy, specificity, generality, h_o,
seconds and the raw accuracies) and the trained network as an UnHype `.safetensors` file.
"""

import json
import os
import sys
import time

import torch
from PIL import Image, ImageDraw

from .fileformat import save_unhype
from .world import load_world
from .world.data import COLOURS
from .world.erasure import (
    ErasureTask,
    accuracies,
    draw_prompts,
    generate,
    scores,
    train_unhype,
    unhype_patch,
)

DEMO_STEPS = 300
# The paper's trajectory objective did not erase within a CPU-sized budget in this world (see the
# README's results table); the direct objective does, so the demo uses it.
DEMO_OBJECTIVE = "direct"
DEMO_SAMPLES = 100
CELL = 96


class ProgressBar:
    """A one-line text bar on stderr; no dependency beyond the standard library."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.started = total, label, time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if done % max(self.total // 50, 1) and done < self.total:
            return
        filled = int(30 * done / self.total)
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                         f"{done}/{self.total} {elapsed:5.0f}s {note}   ")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def grid_prompts(concept: str) -> list[tuple[str, str]]:
    """(label, prompt) rows: erased prompt, held-out synonym and paraphrase, then kept colours."""
    colour = next(c for c in COLOURS if c.word == concept)
    others = [c.word for c in COLOURS if c.word != concept][:3]
    return [
        ("erased", f"a {concept} circle"),
        ("erased: synonym", f"a {colour.synonyms[0]} square"),
        ("erased: paraphrase", f"a picture with a {concept} ring in it"),
        *[("kept", f"a {other} {shape}") for other, shape in zip(others, ["circle", "square",
                                                                           "triangle"])],
    ]


def render_grid(rows: list[tuple[str, str]], before: torch.Tensor, after: torch.Tensor,
                per_row: int) -> Image.Image:
    label_width, header = 260, 24
    width = label_width + 2 * per_row * CELL + 12
    canvas = Image.new("RGB", (width, header + len(rows) * CELL), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((label_width, 4), "before (base model)", fill=(0, 0, 0))
    draw.text((label_width + per_row * CELL + 12, 4), "after (UnHype)", fill=(0, 0, 0))
    for r, (label, prompt) in enumerate(rows):
        top = header + r * CELL
        draw.text((6, top + CELL // 2 - 14), label, fill=(120, 0, 0) if "erased" in label
                  else (0, 90, 0))
        draw.text((6, top + CELL // 2 + 2), f'"{prompt}"', fill=(0, 0, 0))
        for k in range(per_row):
            for column, images in enumerate((before, after)):
                pixels = (images[r * per_row + k].permute(1, 2, 0) * 255).byte().numpy()
                tile = Image.fromarray(pixels).resize((CELL, CELL), Image.NEAREST)
                left = label_width + column * (per_row * CELL + 12) + k * CELL
                canvas.paste(tile, (left, top))
    return canvas


def run_demo(concept: str = "red", out: str = "unhype-demo", steps: int | None = None,
             samples: int | None = None, seed: int = 0) -> dict:
    started = time.perf_counter()
    torch.manual_seed(seed)
    task = ErasureTask([concept])
    world = load_world()
    steps = steps or DEMO_STEPS
    samples = samples or DEMO_SAMPLES
    os.makedirs(out, exist_ok=True)

    bar = ProgressBar(steps, f"training UnHype to erase {concept!r}")
    network, training = train_unhype(
        world, task, objective=DEMO_OBJECTIVE, steps=steps, seed=seed,
        on_progress=lambda p: bar.update(p.step, f"ESD loss {p.losses['esd']:.2e}"))
    save_unhype(os.path.join(out, f"erase-{concept}.safetensors"), network)

    sys.stderr.write(f"measuring: {samples} samples per prompt set, before and after\n")
    drawn = draw_prompts(task, samples, seed)
    before = accuracies(world, drawn, seed)
    after = accuracies(world, drawn, seed, unhype_patch(world, network))

    rows, per_row = grid_prompts(concept), 4
    prompts = [prompt for _, prompt in rows for _ in range(per_row)]
    grid_before = generate(world, prompts, seed + 7)
    grid_after = generate(world, prompts, seed + 7, unhype_patch(world, network))
    render_grid(rows, grid_before, grid_after, per_row).save(os.path.join(out, "grid.png"))

    clip_scores, pixel_scores = scores(before, after, "clip"), scores(before, after, "pixel")
    metrics = {
        "concept": concept,
        **{k: round(v, 4) for k, v in clip_scores.items()},
        "judge": "tiny CLIP zero-shot (pixel judge in 'pixel_judge')",
        "pixel_judge": {k: round(v, 4) for k, v in pixel_scores.items()},
        "accuracy_before": before,
        "accuracy_after": after,
        "samples_per_set": {name: len(items) for name, items in drawn.items()},
        "training_steps": steps,
        "training_seconds": round(training["seconds"], 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with open(os.path.join(out, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
    sys.stderr.write(
        f"efficacy {metrics['efficacy']:.2f}  specificity {metrics['specificity']:.2f}  "
        f"generality {metrics['generality']:.2f}  H_o {metrics['h_o']:.2f}  "
        f"({metrics['seconds']:.0f}s) -> {out}/grid.png, {out}/metrics.json\n")
    return metrics
