"""workflows/proving_ground_erase.json run end to end in a real ComfyUI server (CPU), judged.

UnHype Proving Ground -> UnHype Trainer (erase "red", the Trainer's default objective and
settings; only what the world needs is set) -> UnHype Conditioner -> Apply Dynamic LoRA ->
KSampler -> VAE Decode -> Save Image. The server runs the shipped graph once (training), then
again with other prompts and seeds (the trained network comes from ComfyUI's cache); the saved
images are judged by the world's two colour judges.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _workflow_api import to_api, validate

pytestmark = pytest.mark.host

WORKFLOW = Path(__file__).resolve().parent.parent / "workflows" / "proving_ground_erase.json"
# Trainer inputs the workflow sets for the world; every other input keeps the node's default.
WORLD_SETTINGS = {"concepts", "preset", "steps", "templates", "retain_prompts", "resolution",
                  "save_name"}
ERASED = "red"


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def workflow():
    return json.loads(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def world():
    from unhype.world import load_world

    return load_world()


def by_title(api: dict, title: str) -> dict:
    return next(n for n in api.values() if n["_meta"]["title"].startswith(title))


def trainer_defaults(object_info) -> dict:
    """The Trainer node's default for each input that has one."""
    spec = object_info["UnHypeTrainer"]["input"]
    specs = {**spec["required"], **spec.get("optional", {})}
    return {name: s[1]["default"] for name, s in specs.items()
            if len(s) > 1 and "default" in s[1]}


def test_workflow_is_valid_and_trains_with_the_default_settings(object_info, workflow):
    assert validate(workflow, object_info) == []
    assert any(n["type"] == "Note" for n in workflow["nodes"])
    api = to_api(workflow, object_info)
    trainer = next(n for n in api.values() if n["class_type"] == "UnHypeTrainer")
    defaults = trainer_defaults(object_info)
    changed = {name: value for name, value in trainer["inputs"].items()
               if name in defaults and name not in WORLD_SETTINGS and value != defaults[name]}
    assert changed == {}, "the workflow must train with the Trainer's defaults"
    assert trainer["inputs"]["preset"] == "custom" and trainer["inputs"]["resolution"] == 32
    assert trainer["inputs"]["concepts"] == ERASED
    templates = trainer["inputs"]["templates"].splitlines()
    assert templates and all("{}" in t for t in templates)
    assert not any(ERASED in p for p in trainer["inputs"]["retain_prompts"].splitlines())


def judge_saved(server, outputs: dict, node_id: str, world, colour: int) -> tuple[int, int, int]:
    """(images, pixel-judge hits, CLIP-judge hits) of the prompted colour in one SaveImage."""
    paths = [server.output_path(image) for image in outputs[node_id]["images"]]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    images = torch.from_numpy(pixels).float().div(255).movedim(-1, 1)
    assert images.shape[1:] == (3, 32, 32)
    return (len(images), int((world.judge.pixel_colour(images) == colour).sum()),
            int((world.judge.clip_colour(images) == colour).sum()))


@pytest.mark.slow
def test_workflow_erases_red_and_keeps_the_other_colours(comfy_server, object_info, workflow,
                                                         world):
    from unhype.world.vocabulary import COLOURS, SHAPES, TEMPLATES

    index = {c.word: i for i, c in enumerate(COLOURS)}
    api = to_api(workflow, object_info)
    ids = {n["_meta"]["title"]: k for k, n in api.items()}
    erased_text, kept_text = by_title(api, "Erased prompt"), by_title(api, "Kept prompt")
    samplers = [by_title(api, t) for t in ("before", "after", "kept")]
    latent = next(n for n in api.values() if n["class_type"] == "EmptyLatentImage")
    saves = {row: ids[title] for row, title in
             (("before", "Before"), ("after", "After (red erased)"), ("kept", "Kept (blue)"))}
    # run 0 is the shipped graph; then the erased colour in other captions, next to each other
    # kept colour, with new seeds (the Trainer's output comes from ComfyUI's cache)
    kept = [c.word for c in COLOURS if c.word not in (ERASED, "blue")]
    runs = [(erased_text["inputs"]["text"], kept_text["inputs"]["text"], "blue")]
    for k, colour in enumerate(kept, start=1):
        shape = SHAPES[k % len(SHAPES)].word
        runs.append((TEMPLATES[k].format(colour=ERASED, shape=shape),
                     TEMPLATES[-k].format(colour=colour, shape=shape), colour))
    counts = {row: [0, 0, 0] for row in saves}
    started = time.monotonic()
    train_seconds = None
    for run, (erased_prompt, kept_prompt, kept_colour) in enumerate(runs):
        erased_text["inputs"]["text"], kept_text["inputs"]["text"] = erased_prompt, kept_prompt
        for sampler in samplers:
            sampler["inputs"]["seed"] = 42 + run
        latent["inputs"]["batch_size"] = 8 if run == 0 else 4  # 32 images per row in all
        outputs = comfy_server.run(api, budget=900)
        if train_seconds is None:
            train_seconds = time.monotonic() - started
            report = next(o["text"][0] for k, o in outputs.items()
                          if api[k]["class_type"] == "UnHypeTrainer")
            print(report)
            reports = {api[api[k]["inputs"]["conditioning"][0]]["inputs"]["text"]: o["text"][0]
                       for k, o in outputs.items() if api[k]["class_type"] == "UnHypeConditioner"}
            print(reports)
        for row, node_id in saves.items():
            colour = index[kept_colour if row == "kept" else ERASED]
            judged = judge_saved(comfy_server, outputs, node_id, world, colour)
            counts[row] = [a + b for a, b in zip(counts[row], judged, strict=True)]
    seconds = time.monotonic() - started
    rates = {row: (pixel / n, by_clip / n, n) for row, (n, pixel, by_clip) in counts.items()}
    print(f"proving-ground workflow: first run (training + sampling) {train_seconds:.0f}s, all "
          f"{len(runs)} runs {seconds:.0f}s; prompted colour (pixel judge, CLIP judge, images): "
          + "; ".join(f"{row} {p:.1%} {c:.1%} n={n}" for row, (p, c, n) in rates.items()))
    before, after, kept_rate = rates["before"], rates["after"], rates["kept"]
    assert min(before[:2]) >= 0.95, f"the base model must paint red first: {before}"
    assert max(after[:2]) <= 0.10, (
        f"erased prompts must lose the colour in >= 90% of samples: {after} (the Trainer's "
        "default objective did not erase within the workflow's steps?)")
    assert min(kept_rate[:2]) >= 0.95, f"other colours must keep their colour: {kept_rate}"
