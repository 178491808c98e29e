"""`python -m unhype demo`: erase a colour in the bundled proving-ground world, show and measure it.

Trains with the UnHype Trainer's defaults for the proving ground (unhype/settings.py), then
writes to the output folder: `grid.png` (the same prompts and noise before and after, erased
prompts next to untouched ones, with a caption), `metrics.json` (efficacy, specificity,
generality, h_o, kept_identical, seconds and the raw accuracies) and the trained network as an
UnHype `.safetensors` file: a proving-ground network, which no real model can use.

Cores: torch runs one thread per process (the tiny world's batches are too small for more
threads to pay, benchmarks/bench_threads.py). With two cores, a second process measures the base
model while this one trains, and the two split the trained model's measuring: the same numbers
as one process (each set has its own noise), in less time.
"""

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from .fileformat import load_unhype, save_unhype
from .preview import render_grid
from .world import load_world
from .world.erasure import (
    ErasureTask,
    accuracies,
    draw_prompts,
    generate,
    identical_share,
    scores,
    train_unhype,
    unhype_patch,
)
from .world.vocabulary import COLOURS

CELL = 96
MAX_CORES = 2  # the work splits in two: training | the base model, then the trained model in halves
# "others" alone is as large as the other three; it is measured where its base images were, since
# the same computation in two processes can differ in the last bit (kept_identical compares bits)
SECOND_PROCESS_SETS = ("others",)


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


def choose_cores(requested: int | None) -> tuple[int, str]:
    """How many cores the demo uses, and why: `requested`, else those left free by the load of
    the last minute (os.getloadavg) among the ones this process may run on."""
    if requested is not None:
        over = f", the most that helps is {MAX_CORES}" if requested > MAX_CORES else ""
        return min(requested, MAX_CORES), f"--cores {requested}{over}"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): keep to one core
        return 1, f"{usable} cores, load unknown"
    free = max(1, min(MAX_CORES, int(usable - load + 0.5)))
    return free, f"{usable} cores, load {load:.1f}"


_WORKER_WORLD = None
_WORKER_BASE_IMAGES: dict = {}  # the second process's base images of its sets, by set name


def _second_process() -> ProcessPoolExecutor:
    """A started process with one torch thread and its own world. It imports this same
    `unhype`; a test run imports it through a finder, not sys.path, so the package's folder is
    on sys.path while the process starts (spawn hands sys.path over)."""
    helper = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                 initializer=_start_worker)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    try:
        helper.submit(int)  # a first job starts the process, here
    finally:
        sys.path.remove(root)
    return helper


def _start_worker() -> None:
    global _WORKER_WORLD
    torch.set_num_threads(1)
    _WORKER_WORLD = load_world()


def _measure_base(drawn: dict, seed: int, grid: list[str]) -> tuple[dict, torch.Tensor]:
    """In the second process: the base model's accuracies and grid row (its images of the
    second process's sets stay there, for kept_identical)."""
    global _WORKER_BASE_IMAGES
    _WORKER_BASE_IMAGES = {}
    accuracy = accuracies(_WORKER_WORLD, drawn, seed, images=_WORKER_BASE_IMAGES)
    return accuracy, generate(_WORKER_WORLD, grid, seed + 7)


def _measure_erased(drawn: dict, seed: int, network_path: str,
                    names: tuple[str, ...]) -> tuple[dict, float]:
    """In the second process: the trained model's accuracies on `names`, and the share of
    "others" images bit-identical to this process's base images."""
    patch = unhype_patch(_WORKER_WORLD, load_unhype(network_path))
    images = {}
    accuracy = accuracies(_WORKER_WORLD, drawn, seed, patch, names=names, images=images)
    return accuracy, identical_share(_WORKER_BASE_IMAGES["others"], images["others"])


def article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def grid_prompts(concept: str) -> list[tuple[str, str]]:
    """(label, prompt) rows: erased prompt, held-out synonym and paraphrase, then kept colours."""
    colour = next(c for c in COLOURS if c.word == concept)
    others = [c.word for c in COLOURS if c.word != concept][:3]
    return [
        ("erased", f"{article(concept)} circle"),
        ("erased: synonym", f"{article(colour.synonyms[0])} square"),
        ("erased: paraphrase", f"a dark image of one {concept} ring"),
        *[("kept", f"{article(other)} {shape}") for other, shape in zip(others, ["circle",
                                                                                "square",
                                                                                "triangle"])],
    ]


def caption(concept: str, metrics: dict) -> list[str]:
    return [
        f"UnHype proving ground: the network was trained to erase \"{concept}\" (main word "
        "only). Same prompts and noise in both halves.",
        "synonym: a word for the colour never used in training; paraphrase: a sentence form "
        "never used in training; kept: other colours.",
        f"Scores over {metrics['samples_per_set']['erased']} samples per set (tiny CLIP judge): "
        f"efficacy {100 * metrics['efficacy']:.0f}%, specificity "
        f"{100 * metrics['specificity']:.0f}%, generality {100 * metrics['generality']:.0f}%, "
        f"H_o {100 * metrics['h_o']:.0f}%;",
        f"the erased prompts keep their shape in {100 * metrics['shape_kept']:.0f}% of the base "
        f"model's cases (pixel shape judge; CLIP shape judge "
        f"{100 * metrics['shape_kept_clip']:.0f}%).",
        "A proving-ground network: it works only with this tiny world, not with real models.",
    ]


def run_demo(concept: str = "red", out: str = "unhype-demo", steps: int = 0, samples: int = 60,
             seed: int = 0, objective: str = "trajectory", cores: int | None = None) -> dict:
    """Train, measure, draw; `steps` 0 = the Trainer's default for the proving ground; `cores`
    None = as many as are free (choose_cores)."""
    started = time.perf_counter()
    cores, why = choose_cores(cores)
    sys.stderr.write(f"using {cores} core{'s' * (cores > 1)} ({why}): " + (
        "the base model is measured in a second process while this one trains\n" if cores > 1
        else "one process (--cores 2 measures the base model alongside training)\n"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the second process: the same numbers in either
    helper = _second_process() if cores > 1 else None
    try:
        metrics = _run(concept, out, steps, samples, seed, objective, helper)
    finally:
        torch.set_num_threads(threads)
        if helper:
            helper.shutdown(cancel_futures=True)
    metrics["cores"] = cores
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics_path = os.path.join(out, "metrics.json")
    with open(metrics_path, "w") as handle:
        json.dump(metrics, handle, indent=2)
    sys.stderr.write(
        f"erased {concept!r}: efficacy {100 * metrics['efficacy']:.0f}%, specificity "
        f"{100 * metrics['specificity']:.0f}%, generality {100 * metrics['generality']:.0f}%, "
        f"H_o {100 * metrics['h_o']:.0f}% (tiny CLIP judge; pixel judge H_o "
        f"{100 * metrics['pixel_judge']['h_o']:.0f}%); shape kept on erased prompts "
        f"{100 * metrics['shape_kept']:.0f}% (pixel shape judge; CLIP's "
        f"{100 * metrics['shape_kept_clip']:.0f}%)\n"
        f"took {metrics['seconds']:.0f}s on {cores} core{'s' * (cores > 1)}: training "
        f"{metrics['training_seconds']:.0f}s, measuring {metrics['measuring_seconds']:.0f}s"
        f"{' after it' if cores > 1 else ''}\n"
        f"grid     {os.path.join(out, 'grid.png')}\nmetrics  {metrics_path}\n"
        f"network  {os.path.join(out, f'erase-{concept}.safetensors')} (a proving-ground "
        "network: not for real models)\n")
    return metrics


def _run(concept: str, out: str, steps: int, samples: int, seed: int, objective: str,
         helper: ProcessPoolExecutor | None) -> dict:
    """The demo's work; with a `helper` process, the base model's half runs there meanwhile."""
    torch.manual_seed(seed)
    task = ErasureTask([concept])
    world = load_world()
    os.makedirs(out, exist_ok=True)
    drawn = draw_prompts(task, samples, seed)
    rows, per_row = grid_prompts(concept), 4
    prompts = [prompt for _, prompt in rows for _ in range(per_row)]
    base = helper.submit(_measure_base, drawn, seed, prompts) if helper else None

    bar = ProgressBar(1, f"training UnHype ({objective}) to erase {concept!r}")

    def progress(p):
        bar.total = p.steps
        bar.update(p.step, f"ESD loss {p.losses['esd']:.2e}")

    network, training = train_unhype(world, task, objective=objective, steps=steps, seed=seed,
                                     on_progress=progress)
    network_path = os.path.join(out, f"erase-{concept}.safetensors")
    save_unhype(network_path, network)

    measuring = time.perf_counter()
    bar = ProgressBar(2 * len(drawn), f"measuring: {samples} samples per set, before and after")
    done = 0

    def measured(sets: int) -> None:
        nonlocal done
        done += sets
        bar.update(done)

    patch = unhype_patch(world, network)
    if helper:
        there = helper.submit(_measure_erased, drawn, seed, network_path, SECOND_PROCESS_SETS)
        here = [name for name in drawn if name not in SECOND_PROCESS_SETS]
        after = accuracies(world, drawn, seed, patch, names=here, on_set=lambda _: measured(1))
        before, grid_before = base.result()
        measured(len(before))
        there_after, kept_identical = there.result()
        after.update(there_after)
        measured(len(SECOND_PROCESS_SETS))
        after = {name: after[name] for name in drawn}
    else:
        images_before, images_after = {}, {}
        before = accuracies(world, drawn, seed, on_set=lambda _: measured(1),
                            images=images_before)
        after = accuracies(world, drawn, seed, patch, on_set=lambda _: measured(1),
                           images=images_after)
        kept_identical = identical_share(images_before["others"], images_after["others"])
        grid_before = generate(world, prompts, seed + 7)

    clip_scores, pixel_scores = scores(before, after, "clip"), scores(before, after, "pixel")
    metrics = {
        "concept": concept,
        "objective": objective,
        **{k: round(v, 4) for k, v in clip_scores.items()},
        # the shape by the colour-blind pixel judge: the CLIP one cannot see pale shapes
        "shape_kept": round(pixel_scores["shape_kept"], 4),
        "shape_kept_clip": round(clip_scores["shape_kept"], 4),
        # kept prompts whose image is bit-identical to the base model's (the gate, unhype/gate.py)
        "kept_identical": round(kept_identical, 4),
        "judge": "tiny CLIP zero-shot (pixel judge in 'pixel_judge')",
        "pixel_judge": {k: round(v, 4) for k, v in pixel_scores.items()},
        "accuracy_before": before,
        "accuracy_after": after,
        "samples_per_set": {name: len(items) for name, items in drawn.items()},
        "training_steps": network.info.training["steps"],
        "training_seconds": round(training["seconds"], 1),
        "measuring_seconds": round(time.perf_counter() - measuring, 1),
    }
    grid_after = generate(world, prompts, seed + 7, patch)
    render_grid(rows, grid_before, grid_after, per_row, caption(concept, metrics), CELL).save(
        os.path.join(out, "grid.png"))
    return metrics
